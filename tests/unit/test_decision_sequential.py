"""The rollout state machine with the sequential judge, tick after tick on a simulated cluster.

Each analysed interval carries a real judgement: :class:`JudgedDriver` keeps
deterministic cumulative counters for both versions, served in proportion to
their Ready pods, and does what ``interval.evaluate`` does with them
(on a step's first poll a baseline at ``readyAt + warmup``, then
``judging.judge_interval`` and ``combine``). The threshold checks'
verdicts come from builders' verdict sources, as in test_decision.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from builders import (
    Driver,
    FakeCluster,
    TickRecord,
    always,
    interval_verdict,
    make_rollout,
    phase_is,
    sequence,
    tagged,
)

from autocanary.analysis import judging
from autocanary.analysis.thresholds import IntervalVerdict
from autocanary.judge import CounterSnapshot, JudgeState, JudgeVerdict
from autocanary.promql import Sample
from autocanary.rollout.state import RolloutState, dumps, loads

V2 = "registry.local/shop/web:2.0"
PROBE = "127.0.0.1:9102"  # one probe instance: every answer of a version lands on one series


@dataclass
class VersionCounters:
    """A version's cumulative counters; errors are exactly ``error_rate`` of requests so far."""

    error_rate: float
    served: float = 0.0  # requests, fractional while accumulating

    @property
    def requests(self) -> int:
        return math.floor(self.served)

    @property
    def errors(self) -> int:
        return math.floor(self.requests * self.error_rate)

    def samples(self) -> tuple[list[Sample], list[Sample], list[Sample]]:
        instance = {"instance": PROBE}
        errors: list[Sample] = [(instance, float(self.errors))] if self.errors else []
        buckets: list[Sample] = [({**instance, "le": "+Inf"}, float(self.requests))]
        return [(instance, float(self.requests))], errors, buckets


@dataclass
class Traffic:
    """Requests to both versions, split by Ready pods, with snapshots kept by time."""

    rate: float  # requests per second over both versions
    canary: VersionCounters
    stable: VersionCounters
    history: list[tuple[datetime, tuple[CounterSnapshot, CounterSnapshot]]] = field(
        default_factory=list
    )

    def serve(self, now: datetime, seconds: float, canary_ready: int, stable_ready: int) -> None:
        ready = canary_ready + stable_ready
        if ready:
            self.canary.served += self.rate * seconds * canary_ready / ready
            self.stable.served += self.rate * seconds * stable_ready / ready
        snapshots = (
            judging.snapshot(tagged(*self.canary.samples())),
            judging.snapshot(tagged(*self.stable.samples())),
        )
        self.history.append((now, snapshots))

    def at(self, instant: datetime) -> tuple[CounterSnapshot, CounterSnapshot]:
        """The counters as Prometheus would return them at ``instant``: the last ones by then."""
        before = [snapshots for t, snapshots in self.history if t <= instant]
        return before[-1]


@dataclass
class JudgedDriver(Driver):
    """builders.Driver whose verdicts carry the sequential judge's judgement and state."""

    traffic: Traffic = field(
        default_factory=lambda: Traffic(20.0, VersionCounters(0.01), VersionCounters(0.01))
    )

    def analyse(self, state: RolloutState) -> IntervalVerdict:
        """What RolloutEngine._analyse does with the sequential judge enabled."""
        threshold = interval_verdict(self.verdicts(self.now, state), self.now)
        sequential = self.rollout.analysis.sequential
        assert sequential is not None
        baseline = None
        if state.last_analysis_at is None and state.ready_at is not None:
            baseline = self.traffic.at(state.ready_at + self.rollout.analysis.warmup)
        judge_state, judgement = judging.judge_interval(
            sequential, state.judge, baseline, self.traffic.at(self.now)
        )
        return judging.combine(threshold, judgement, judge_state)

    def tick(self, command: str | None = None) -> TickRecord:
        # Requests since the last tick went to the pods that were Ready meanwhile.
        last = self.history[-1].now if self.history else None
        seconds = (self.now - last).total_seconds() if last is not None else 0.0
        self.traffic.serve(
            self.now, seconds, self.cluster.canary.ready(), self.cluster.stable.ready()
        )
        return super().tick(command)

    def judgements(self) -> list[JudgeVerdict]:
        return [
            r.verdict.judgement.verdict for r in self.history if r.verdict and r.verdict.judgement
        ]


TWO_STEPS = [{"canary": 1, "hold": "1m"}, {"canary": "50%", "hold": "1m"}]


def judged(
    traffic: Traffic,
    *,
    steps: list[dict[str, Any]] | None = None,
    sequential: dict[str, Any] | None = None,
    **analysis: Any,
) -> JudgedDriver:
    """A driver whose canary has just been given a new revision, the judge enabled."""
    rollout = make_rollout(
        steps=steps or TWO_STEPS,
        analysis={
            "warmup": "20s",
            # exact shares every poll: no poll-to-poll noise to allow for
            "sequential": {"noiseFloor": 0, **(sequential or {})},
            **analysis,
        },
    )
    driver = JudgedDriver(rollout, FakeCluster.create(4), traffic=traffic)
    driver.cluster.release(V2)
    return driver


def quiet() -> Traffic:
    """An identical canary at 1 request/s: too few errors for the judge to prove anything."""
    return Traffic(1.0, VersionCounters(0.01), VersionCounters(0.01))


def reasons_of(record: TickRecord) -> list[str]:
    return [t.reason for t in record.decision.transitions]


# ------------------------------------------------------------------ proven harm


def test_proven_harm_at_step_one_rolls_back_at_once_despite_the_failure_limit() -> None:
    driver = judged(
        Traffic(20.0, VersionCounters(0.10), VersionCounters(0.01)),
        steps=[{"canary": 1, "hold": "10m"}, {"canary": "50%", "hold": "1m"}],
        failureLimit=5,
    )
    driver.verdicts = always("pass")  # the threshold checks see nothing wrong
    record = driver.run_until(phase_is("rollingBack"))

    analysed = [r for r in driver.history if r.verdict is not None]
    assert analysed == [record], "the first analysed interval decides"
    assert record.decision.state.step == 0
    assert reasons_of(record) == ["AnalysisFailed", "RolledBack"]
    failed, rolled_back = record.decision.transitions
    assert rolled_back.kind == "rolledBack"
    assert rolled_back.message.startswith("sequential judge: errors: canary error odds")
    assert "failureLimit" not in rolled_back.message
    checks = {c.name: c for c in rolled_back.checks}
    assert set(checks) == {"errors", "sequential:errors"}
    assert checks["errors"].verdict == "pass"
    assert checks["sequential:errors"].verdict == "fail"
    value = checks["sequential:errors"].value
    assert value is not None
    assert value > 1.2  # the canary's error odds against the stable's, beyond the tolerance
    assert "CS" in checks["sequential:errors"].threshold
    assert failed.checks == rolled_back.checks
    state = record.decision.state
    assert state.failures == 1
    assert state.judge is not None
    assert state.judge.polls == 1
    assert record.decision.desired.canary_replicas == 0
    assert driver.tick().decision.state.phase == "rolledBack"


def test_only_post_warmup_traffic_counts_at_a_steps_first_poll() -> None:
    driver = judged(quiet())
    driver.run_until(lambda s: s.stage == "analysing")
    record = driver.run_until(lambda s: s.judge is not None)
    ready = record.decision.state.ready_at
    assert ready is not None
    assert record.now == ready + timedelta(seconds=50)  # warm-up 20s + interval 30s
    evidence = record.verdict.judgement if record.verdict else None
    assert evidence is not None
    # 1 req/s, a quarter of it to the canary, for the 30s after the warm-up (50s since Ready).
    errors = evidence.metrics[0]
    assert 29 <= errors.canary_requests + errors.stable_requests <= 30
    assert errors.canary_requests in (7, 8)


# ------------------------------------------------------------------ undecided


def test_undecided_advances_on_holds_but_the_last_step_waits_for_proven_safety() -> None:
    traffic = quiet()
    driver = judged(traffic)
    driver.verdicts = always("pass")
    driver.run_until(lambda s: s.step == 1 and s.stage == "analysing")
    assert "StepAdvanced" in driver.reasons()
    assert not judging.all_safe(driver.state.judge)

    # The last step's hold ends with passing intervals; the judge is still undecided.
    ready = driver.state.ready_at
    assert ready is not None
    waited = driver.run(30)  # 5 minutes
    assert waited[-1].now - ready > timedelta(minutes=4)
    assert all(r.decision.state.phase == "progressing" for r in waited)
    assert all("Promoting" not in reasons_of(r) for r in waited)
    assert sum(r.verdict is not None for r in waited) >= 9
    assert all(r.verdict.verdict == "pass" for r in waited if r.verdict is not None)
    assert set(driver.judgements()) == {JudgeVerdict.CONTINUE}
    assert driver.state.message.startswith("analysing step 2/2")

    # Traffic picks up: safety is proven within a few polls, and the release promotes.
    traffic.rate = 400.0
    traffic.canary.error_rate = traffic.stable.error_rate = 0.05
    record = driver.run_until(phase_is("promoting"), limit=30)
    assert judging.all_safe(record.decision.state.judge)
    assert record.verdict is not None
    assert record.verdict.judgement is not None
    assert record.verdict.judgement.verdict is JudgeVerdict.PROMOTE
    assert "safety proven for every metric" in record.verdict.reason
    (promoting,) = record.decision.transitions
    assert promoting.message.startswith("all 2 steps passed their analysis")
    driver.run_until(phase_is("succeeded"))


def test_safety_proven_early_promotes_after_the_last_hold() -> None:
    driver = judged(Traffic(400.0, VersionCounters(0.05), VersionCounters(0.05)))
    record = driver.run_until(phase_is("promoting"))
    assert driver.judgements()[0] is JudgeVerdict.PROMOTE  # proven at step 1 already
    assert driver.reasons()[:3] == ["ReleaseDetected", "StepAdvanced", "Promoting"]
    ready = record.decision.state.ready_at
    assert ready is not None
    assert record.now - ready >= timedelta(minutes=1)  # the hold still applies


@pytest.mark.parametrize(
    ("policy", "phase", "reason"),
    [("pause", "paused", "Paused"), ("rollback", "rollingBack", "RolledBack")],
)
def test_undecided_past_max_duration_applies_the_inconclusive_policy(
    policy: str, phase: str, reason: str
) -> None:
    driver = judged(quiet(), sequential={"maxDuration": "10m"}, inconclusivePolicy=policy)
    record = driver.run_until(phase_is(phase))

    started = record.decision.state.started_at
    assert started is not None
    assert record.now - started > timedelta(minutes=10)
    assert record.now - started <= timedelta(minutes=10, seconds=10)  # the first tick past it
    assert reasons_of(record)[-1] == reason
    message = record.decision.transitions[-1].message
    assert message.startswith(
        "the sequential judge proved neither harm nor safety within maxDuration 10m: "
    )
    assert "undecided" in message  # the last interval's reason says where the evidence stood
    assert record.decision.state.step == 1  # waiting at the last step
    assert not judging.all_safe(record.decision.state.judge)
    assert "Promoting" not in driver.reasons()


def test_max_duration_counts_from_the_release_start_not_the_step() -> None:
    # The first step alone outlasts maxDuration: the policy applies there.
    driver = judged(
        quiet(),
        steps=[{"canary": 1, "hold": "30m"}, {"canary": "50%", "hold": "1m"}],
        sequential={"maxDuration": "5m"},
    )
    record = driver.run_until(phase_is("paused"))
    assert record.decision.state.step == 0
    assert "maxDuration 5m" in record.decision.transitions[-1].message


def test_resume_after_the_max_duration_pause_gives_the_judge_another_max_duration() -> None:
    driver = judged(quiet(), sequential={"maxDuration": "10m"})
    paused = driver.run_until(phase_is("paused"))
    judge = paused.decision.state.judge
    assert judge is not None
    polls = judge.polls
    resumed = driver.tick("resume")
    assert resumed.decision.state.started_at == resumed.now

    record = driver.run_until(lambda s: s.phase != "progressing" or s.last_analysis_at is not None)
    assert record.verdict is not None, "evidence is gathered again before any new decision"
    assert record.decision.state.judge is not None
    assert record.decision.state.judge.polls == polls + 1  # kept, and added to
    again = driver.run_until(phase_is("paused"))
    assert timedelta(minutes=10) < again.now - resumed.now <= timedelta(minutes=10, seconds=10)
    assert "maxDuration 10m" in again.decision.transitions[-1].message


def test_resume_before_max_duration_keeps_the_release_clock() -> None:
    driver = judged(quiet(), sequential={"maxDuration": "10m"})
    driver.run_until(lambda s: s.judge is not None)
    started = driver.state.started_at
    driver.tick("pause")
    resumed = driver.tick("resume")
    assert resumed.decision.state.started_at == started
    record = driver.run_until(phase_is("paused"))
    assert started is not None
    assert record.now - started <= timedelta(minutes=10, seconds=10)


# ------------------------------------------------------------------ threshold checks alongside


def test_a_failing_threshold_check_still_rolls_back_while_the_judge_is_undecided() -> None:
    driver = judged(quiet())
    driver.verdicts = sequence("pass", "pass", "fail")
    record = driver.run_until(phase_is("rollingBack"))
    assert reasons_of(record) == ["AnalysisFailed", "RolledBack"]
    rolled_back = record.decision.transitions[-1]
    assert "(1 failed interval(s), failureLimit 0)" in rolled_back.message
    assert "sequential judge: undecided" in rolled_back.message
    assert {c.name: c.verdict for c in rolled_back.checks} == {
        "errors": "fail",
        "sequential:errors": "inconclusive",
    }
    assert driver.judgements() == [JudgeVerdict.CONTINUE] * 3


def test_a_failing_threshold_check_rolls_back_even_when_safety_is_proven() -> None:
    driver = judged(Traffic(400.0, VersionCounters(0.05), VersionCounters(0.05)))
    driver.verdicts = sequence("pass", "fail")
    record = driver.run_until(phase_is("rollingBack"))
    assert judging.all_safe(record.decision.state.judge)
    assert {c.name: c.verdict for c in record.decision.transitions[-1].checks} == {
        "errors": "fail",
        "sequential:errors": "pass",
    }


def test_threshold_failures_under_the_limit_are_counted_not_fatal() -> None:
    driver = judged(Traffic(400.0, VersionCounters(0.05), VersionCounters(0.05)), failureLimit=1)
    driver.verdicts = sequence("fail")
    driver.run_until(phase_is("succeeded"))
    assert driver.reasons().count("AnalysisFailed") == 1
    assert "RolledBack" not in driver.reasons()


def test_an_inconclusive_threshold_interval_blocks_promotion_despite_proven_safety() -> None:
    driver = judged(
        Traffic(400.0, VersionCounters(0.05), VersionCounters(0.05)), inconclusiveLimit=100
    )
    driver.verdicts = always("inconclusive")
    driver.run(60)
    assert judging.all_safe(driver.state.judge)
    assert driver.state.phase == "progressing"
    assert driver.state.step == 0
    assert "StepAdvanced" not in driver.reasons()


# ------------------------------------------------------------------ persistence


def test_the_judge_state_is_persisted_and_survives_the_annotation() -> None:
    driver = judged(quiet())
    driver.run_until(lambda s: s.step == 1 and s.stage == "analysing")
    driver.run(12)
    analysed = [r for r in driver.history if r.verdict is not None]
    state = driver.state
    assert state.judge is not None
    last = analysed[-1].verdict
    assert last is not None
    assert state.judge == last.judge_state
    assert state.judge.polls == len(analysed)
    back = loads(dumps(state))
    assert back == state
    assert isinstance(back.judge, JudgeState)
    assert back.judge == state.judge
    # Totals over both steps: the requests served after each step's warm-up, not the rest.
    totals = state.judge.metrics[0].totals
    assert 0 < totals[0] < driver.traffic.canary.requests
    assert 0 < totals[2] < driver.traffic.stable.requests


def test_a_restart_mid_release_resumes_identically() -> None:
    """Serialising the state before every tick (a restart each time) changes no decision."""

    def scenario() -> JudgedDriver:
        traffic = Traffic(30.0, VersionCounters(0.03), VersionCounters(0.03))
        return judged(traffic, sequential={"maxDuration": "30m"})

    straight, restarted = scenario(), scenario()
    for _ in range(200):
        restarted.state = loads(dumps(restarted.state))
        a, b = straight.tick(), restarted.tick()
        assert a.decision == b.decision
        if a.decision.state.phase == "succeeded":
            break
    assert straight.state.phase == "succeeded"
    assert straight.state.judge is not None
    assert straight.state.judge.polls > 2


def test_a_new_release_starts_with_no_evidence() -> None:
    driver = judged(quiet())
    driver.run_until(lambda s: s.judge is not None)
    driver.cluster.release("registry.local/shop/web:3.0")
    record = driver.tick()
    assert reasons_of(record) == ["ReleaseDetected"]
    assert record.decision.state.judge is None


def test_resume_after_a_pause_keeps_the_evidence() -> None:
    driver = judged(quiet(), steps=[{"canary": 1, "hold": "1h"}])
    driver.run_until(lambda s: s.judge is not None and s.judge.polls >= 3)
    evidence = driver.state.judge
    assert evidence is not None
    paused = driver.tick("pause")
    assert paused.decision.state.phase == "paused"
    resumed = driver.tick("resume")
    assert resumed.decision.state.judge == evidence
    record = driver.run_until(lambda s: s.judge is not None and s.judge.polls == 4)
    assert record.verdict is not None
    assert record.verdict.judgement is not None
    # The resumed step's warm-up is skipped: 30s at 1 req/s, a quarter of it to the canary,
    # out of all the canary served since the poll before the pause.
    counted = record.verdict.judgement.poll.canary_requests
    assert counted in (7, 8)
    assert driver.traffic.at(record.now)[0].vectors(())[PROBE][0] - evidence.canary[PROBE][0] > 15


# ------------------------------------------------------------------ a stable without pods


def test_a_step_leaving_the_stable_no_pods_waits_for_proven_safety() -> None:
    """At 100% with scaleDownStable no evidence can come: safety is proven at 50% first."""
    traffic = Traffic(20.0, VersionCounters(0.05), VersionCounters(0.05))
    driver = judged(
        traffic,
        steps=[
            {"canary": 1, "hold": "1m"},
            {"canary": "50%", "hold": "1m"},
            {"canary": "100%", "hold": "1m"},
        ],
    )
    driver.run_until(lambda s: s.step == 1 and s.stage == "analysing")
    ready = driver.state.ready_at
    assert ready is not None
    assert not judging.all_safe(driver.state.judge)

    record = driver.run_until(lambda s: s.step == 2)
    assert reasons_of(record) == ["StepAdvanced"]
    assert record.now - ready > timedelta(minutes=2)  # held well past its 1m hold
    assert judging.all_safe(record.decision.state.judge)
    safe_at = next(
        r.now
        for r in driver.history
        if r.verdict is not None and judging.all_safe(r.verdict.judge_state)
    )
    assert safe_at == record.now  # advanced on the interval that proved it, not before

    driver.run_until(phase_is("succeeded"))
    # At 100% the stable served nothing: the judge saw no more stable requests.
    stable_requests = [
        r.verdict.judgement.poll.stable_requests
        for r in driver.history
        if r.verdict is not None and r.verdict.judgement is not None and r.obs.stable.ready == 0
    ]
    assert stable_requests
    assert set(stable_requests) == {0}
