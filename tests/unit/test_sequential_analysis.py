"""The sequential judge's glue in the daemon: Prometheus samples to snapshots, polls, verdicts.

Counters are given as the samples the joined counter query returns (labels,
value, each tagged with its counter), so each test runs the same path as the
engine: ``snapshot`` -> ``judge_interval`` -> ``combine``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import pytest
from builders import tagged

from autocanary.analysis import judging
from autocanary.analysis.thresholds import CheckResult, IntervalVerdict
from autocanary.analysis.verdict import Verdict
from autocanary.config.models import SequentialAnalysisConfig
from autocanary.errors import StateCorrupt
from autocanary.judge import CounterSnapshot, Judgement, JudgeState, JudgeVerdict, counts
from autocanary.judge.state import STATE_VERSION
from autocanary.promql import Sample
from autocanary.rollout.state import RolloutState, dumps, loads

AT = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
INF = math.inf
# The guard is off unless a test is about it: these tests are about the e-processes.
CFG = SequentialAnalysisConfig.model_validate(
    {"latencyThresholds": ["250ms"], "latencyTolerance": "0%", "noiseFloor": 0}
)
POD_A, POD_B = "10.0.0.1:8080", "10.0.0.2:8080"


# ------------------------------------------------------------------ synthetic counters


@dataclass
class Series:
    """Cumulative counters of one instance."""

    requests: int = 0
    errors: int = 0
    fast: int = 0  # observations <= 0.25s

    def serve(self, requests: int, errors: int, slow: int) -> None:
        self.requests += requests
        self.errors += errors
        self.fast += requests - slow


@dataclass
class Version:
    """One version's instances, turned into the samples the counter queries return."""

    # the pod is up (counters at 0) before the first read: a series first seen later is a baseline
    series: dict[str, Series] = field(default_factory=lambda: {POD_A: Series()})

    def serve(self, requests: int, errors: int, slow: int = 0, instance: str = POD_A) -> None:
        self.series.setdefault(instance, Series()).serve(requests, errors, slow)

    def samples(self) -> tuple[list[Sample], list[Sample], list[Sample]]:
        requests: list[Sample] = []
        errors: list[Sample] = []
        buckets: list[Sample] = []
        for instance, s in self.series.items():
            requests.append(({"instance": instance}, float(s.requests)))
            if s.errors:  # like the probe: no error series before the first error
                errors.append(({"instance": instance}, float(s.errors)))
            buckets += [
                ({"instance": instance, "le": "0.1"}, 0.0),
                ({"instance": instance, "le": "0.25"}, float(s.fast)),
                ({"instance": instance, "le": "+Inf"}, float(s.requests)),
            ]
        return requests, errors, buckets

    def snapshot(self) -> CounterSnapshot:
        return judging.snapshot(tagged(*self.samples()))


@dataclass
class Pair:
    """Canary and stable served together."""

    canary: Version = field(default_factory=Version)
    stable: Version = field(default_factory=Version)

    def now(self) -> tuple[CounterSnapshot, CounterSnapshot]:
        return self.canary.snapshot(), self.stable.snapshot()

    def serve(self, canary: tuple[int, int, int], stable: tuple[int, int, int]) -> None:
        self.canary.serve(*canary)
        self.stable.serve(*stable)


def poll(
    persisted: JudgeState | None,
    now: tuple[CounterSnapshot, CounterSnapshot],
    baseline: tuple[CounterSnapshot, CounterSnapshot] | None = None,
    cfg: SequentialAnalysisConfig = CFG,
) -> tuple[JudgeState, Judgement]:
    return judging.judge_interval(cfg, persisted, baseline, now)


def threshold_verdict(kind: Verdict) -> IntervalVerdict:
    """An interval verdict from one threshold check, as ``analysis.judge_interval`` gives it."""
    value = {"pass": 0.001, "fail": 0.2, "inconclusive": None}[kind]
    check = CheckResult("error-rate", kind, value, None, "<= 0.01", f"error-rate {kind}")
    return IntervalVerdict(kind, AT, (check,), 500.0, f"error-rate: {kind}")


# ------------------------------------------------------------------ snapshot


def test_the_counter_queries_are_joined_into_one() -> None:
    queries = judging.CounterQueries("req", "err", "buck")
    assert queries.joined() == (
        'label_replace(req, "autocanary_counter", "requests", "", "") or '
        'label_replace(err, "autocanary_counter", "errors", "", "") or '
        'label_replace(buck, "autocanary_counter", "bucket", "", "")'
    )


def test_snapshot_keys_series_by_instance() -> None:
    snap = judging.snapshot(
        tagged(
            [({"instance": POD_A}, 120.0), ({"instance": POD_B}, 80.0)],
            [({"instance": POD_A}, 3.0), ({"instance": POD_B}, 1.0)],
            [
                ({"instance": POD_A, "le": "0.25"}, 100.0),
                ({"instance": POD_B, "le": "0.25"}, 70.0),
            ],
        )
    )
    assert set(snap.series) == {POD_A, POD_B}
    assert (snap.series[POD_A].requests, snap.series[POD_A].errors) == (120.0, 3.0)
    assert (snap.series[POD_B].requests, snap.series[POD_B].errors) == (80.0, 1.0)
    assert snap.series[POD_A].buckets == {0.25: 100.0}
    assert snap.series[POD_B].buckets == {0.25: 70.0}


def test_an_instance_without_error_series_has_its_errors_absent() -> None:
    snap = judging.snapshot(
        tagged(
            [({"instance": POD_A}, 120.0), ({"instance": POD_B}, 80.0)],
            [({"instance": POD_A}, 3.0)],
            [],
        )
    )
    assert snap.series[POD_B].errors is None  # the judge decides what absent means
    assert snap.series[POD_A].errors == 3.0


def test_two_targets_behind_one_service_stay_two_series() -> None:
    """An HA pair scraped as two targets that share the Service's instance label."""
    svc = "web.default.svc:8080"
    snap = judging.snapshot(
        tagged(
            [({"instance": svc, "pod": "a"}, 1000.0), ({"instance": svc, "pod": "b"}, 900.0)],
            [({"instance": svc, "pod": "a"}, 10.0), ({"instance": svc, "pod": "b"}, 9.0)],
            [
                ({"instance": svc, "pod": "a", "le": "+Inf"}, 1000.0),
                ({"instance": svc, "pod": "b", "le": "+Inf"}, 900.0),
            ],
        )
    )
    assert len(snap.series) == 2
    # one of them missing from a poll: the other's increase is all that counts
    after = judging.snapshot(
        tagged(
            [({"instance": svc, "pod": "a"}, 1100.0)],
            [({"instance": svc, "pod": "a"}, 11.0)],
            [({"instance": svc, "pod": "a", "le": "+Inf"}, 1100.0)],
        )
    )
    first = counts.reconcile({}, {}, snap, ())
    got = counts.reconcile(first.counters, first.start_times, after, ())
    assert got.increase.tolist() == [100, 1, 100]


def test_buckets_are_parsed_by_le_including_inf() -> None:
    snap = Version({POD_A: Series(50, 2, 40)}).snapshot()
    assert snap.series[POD_A].buckets == {0.1: 0.0, 0.25: 40.0, INF: 50.0}
    # In the judge's field layout: requests, errors, observations (+Inf), fast at 0.25s.
    assert snap.vectors((0.25,)) == {POD_A: (50, 2, 50, 40)}


def test_instances_are_not_mixed_and_a_missing_instance_label_is_one_series() -> None:
    # A query aggregated to one series (no instance label) is one series keyed "".
    snap = judging.snapshot(
        tagged([({}, 10.0)], [({}, 1.0)], [({"le": "+Inf"}, 10.0), ({"le": "0.25"}, 9.0)])
    )
    assert snap.vectors((0.25,)) == {"": (10, 1, 10, 9)}
    # Errors and buckets of another instance never land on this one.
    other = judging.snapshot(
        tagged(
            [({"instance": POD_A}, 10.0)],
            [({"instance": POD_B}, 4.0)],
            [({"instance": POD_B, "le": "+Inf"}, 7.0)],
        )
    )
    assert other.series[POD_A].errors is None
    assert other.series[POD_A].buckets == {}


# ------------------------------------------------------------------ judge_interval


def test_the_first_poll_counts_from_the_baseline() -> None:
    traffic = Pair()
    traffic.serve((500, 50, 0), (500, 5, 0))  # before the baseline: never counted
    baseline = traffic.now()
    traffic.serve((100, 2, 10), (900, 9, 90))
    state, judgement = poll(None, traffic.now(), baseline)

    errors, latency = judgement.metrics
    assert (errors.canary_requests, errors.canary_events) == (100, 2)
    assert (errors.stable_requests, errors.stable_events) == (900, 9)
    assert (latency.canary_events, latency.stable_events) == (10, 90)
    assert judgement.poll.canary_requests == 100
    assert state.polls == 1
    assert state.canary == {POD_A: (600, 52, 600, 590)}


def test_without_a_baseline_the_first_poll_starts_the_evidence_now() -> None:
    traffic = Pair()
    traffic.serve((500, 250, 0), (500, 5, 0))
    state, judgement = poll(None, traffic.now())
    assert judgement.verdict is JudgeVerdict.CONTINUE
    assert [m.canary_requests for m in judgement.metrics] == [0, 0]
    assert all(e == 0.0 for m in state.metrics for e in m.evidence)


def test_skip_moves_the_baseline_without_evidence() -> None:
    """A step's warm-up skipped by its baseline counts exactly as if it never happened."""
    with_warmup, without = Pair(), Pair()
    for traffic in (with_warmup, without):
        traffic.canary.series[POD_B] = Series()  # step 2's pod, up before step 1's first read
        traffic.serve((100, 1, 5), (900, 9, 45))
    first = poll(None, with_warmup.now(), (Version().snapshot(), Version().snapshot()))
    assert first == poll(None, without.now(), (Version().snapshot(), Version().snapshot()))
    persisted = first[0]

    # Step 2's warm-up: a cold canary failing half its requests, new pods, slow answers.
    with_warmup.canary.serve(200, 100, 150, instance=POD_B)
    with_warmup.canary.serve(50, 25, 40)
    with_warmup.stable.serve(800, 8, 40)
    baseline = with_warmup.now()
    for traffic in (with_warmup, without):
        traffic.canary.serve(300, 3, 15, instance=POD_B)
        traffic.serve((100, 1, 5), (600, 6, 30))

    skipped_state, skipped = poll(persisted, with_warmup.now(), baseline)
    clean_state, clean = poll(persisted, without.now())
    assert [m.evidence for m in skipped_state.metrics] == [m.evidence for m in clean_state.metrics]
    assert [m.totals for m in skipped_state.metrics] == [m.totals for m in clean_state.metrics]
    assert skipped_state.polls == clean_state.polls == 2
    assert skipped.metrics == clean.metrics
    assert skipped.verdict is clean.verdict is JudgeVerdict.CONTINUE
    assert skipped.metrics[0].canary_requests == 500  # 100 before, 400 after the warm-up

    # Counted, the same warm-up proves harm: skipping it is what keeps the canary.
    _, counted = poll(persisted, with_warmup.now())
    assert counted.verdict is JudgeVerdict.ROLLBACK


def test_persisted_state_round_trips_through_json() -> None:
    traffic = Pair()
    baseline = traffic.now()
    traffic.serve((137, 3, 11), (1213, 17, 101))
    state, _ = poll(None, traffic.now(), baseline)
    text = json.dumps(state.to_dict())
    back = JudgeState.from_dict(json.loads(text))
    assert back == state
    assert back.to_dict() == state.to_dict()


def _release_polls() -> list[tuple[int, int, int, int, int, int]]:
    """Per-poll (canary n, x, slow, stable m, y, slow): mixed traffic, a pod restart at poll 5."""
    return [(50 + 7 * k, k % 3, 5 + k % 4, 450 + 11 * k, 4 + k % 5, 40 + k % 7) for k in range(10)]


def _run(restart_at: int | None) -> tuple[list[Judgement], JudgeState]:
    traffic = Pair()
    persisted: JudgeState | None = None
    baseline: tuple[CounterSnapshot, CounterSnapshot] | None = traffic.now()
    judgements = []
    state = None
    for k, (n, x, cs, m, y, ss) in enumerate(_release_polls()):
        if k == 5:  # the canary pod restarted: its counters begin again from 0
            traffic.canary.series[POD_A] = Series()
        traffic.serve((n, x, cs), (m, y, ss))
        state, judgement = poll(persisted, traffic.now(), baseline)
        baseline = None
        judgements.append(judgement)
        persisted = state
        if k == restart_at:
            # The daemon dies: the evidence survives only in the state annotation.
            annotation = dumps(
                RolloutState(phase="progressing", revision="r", total=3, judge=persisted)
            )
            persisted = loads(annotation).judge
    assert state is not None
    return judgements, state


def test_a_restart_mid_release_gives_identical_evidence() -> None:
    straight, straight_state = _run(restart_at=None)
    restarted, restarted_state = _run(restart_at=4)
    assert restarted_state == straight_state
    assert restarted == straight
    assert straight_state.polls == 10
    # Nothing lost, nothing double-counted across the restart or the pod's counter reset.
    polls = _release_polls()
    errors = straight_state.metrics[0]
    assert errors.totals == (
        sum(p[0] for p in polls),
        sum(p[1] for p in polls),
        sum(p[3] for p in polls),
        sum(p[4] for p in polls),
    )


# ------------------------------------------------------------------ combine and results


def _harm() -> tuple[JudgeState, Judgement]:
    traffic = Pair()
    baseline = traffic.now()
    traffic.serve((200, 40, 10), (1800, 18, 90))  # 20% vs 1% errors
    return poll(None, traffic.now(), baseline)


def _undecided() -> tuple[JudgeState, Judgement]:
    traffic = Pair()
    baseline = traffic.now()
    traffic.serve((20, 1, 2), (180, 2, 18))
    return poll(None, traffic.now(), baseline)


def _safe() -> tuple[JudgeState, Judgement]:
    traffic = Pair()
    baseline = traffic.now()
    traffic.serve((20_000, 1000, 2000), (20_000, 1000, 2000))
    return poll(None, traffic.now(), baseline)


@pytest.mark.parametrize("threshold", ["pass", "inconclusive", "fail"])
def test_proven_harm_fails_the_interval_with_the_judges_reason(threshold: Verdict) -> None:
    state, judgement = _harm()
    assert judgement.verdict is JudgeVerdict.ROLLBACK
    assert not judgement.critical
    before = threshold_verdict(threshold)
    combined = judging.combine(before, judgement, state)

    assert combined.verdict == "fail"
    assert combined.reason == f"sequential judge: {judgement.reason}"
    assert combined.reason.startswith("sequential judge: errors: canary error odds")
    assert combined.judgement is judgement
    assert combined.judge_state == state
    assert [c.name for c in combined.checks] == [
        "error-rate",
        "sequential:errors",
        "sequential:latency>0.25s",
    ]
    assert combined.checks[0] == before.checks[0]
    assert (combined.at, combined.canary_requests) == (before.at, before.canary_requests)
    assert judging.harm_proven(combined.judgement)


@pytest.mark.parametrize("threshold", ["pass", "inconclusive", "fail"])
def test_an_undecided_judge_leaves_the_threshold_verdict(threshold: Verdict) -> None:
    state, judgement = _undecided()
    assert judgement.verdict is JudgeVerdict.CONTINUE
    before = threshold_verdict(threshold)
    combined = judging.combine(before, judgement, state)
    assert combined.verdict == threshold
    assert combined.reason == f"error-rate: {threshold}; sequential judge: {judgement.reason}"
    assert "undecided" in combined.reason
    assert combined.judge_state == state
    assert not judging.harm_proven(combined.judgement)


def test_proven_safety_does_not_override_a_failing_threshold_check() -> None:
    state, judgement = _safe()
    assert judgement.verdict is JudgeVerdict.PROMOTE
    combined = judging.combine(threshold_verdict("fail"), judgement, state)
    assert combined.verdict == "fail"
    assert combined.reason.startswith("error-rate: fail; sequential judge: safety proven")


def test_results_name_each_metric_and_map_its_evidence_to_a_verdict() -> None:
    harm = {r.name: r for r in judging.results(_harm()[1])}
    assert harm["sequential:errors"].verdict == "fail"
    assert harm["sequential:latency>0.25s"].verdict == "inconclusive"
    assert harm["sequential:errors"].reason == "canary 40/200 vs stable 18/1800"
    value = harm["sequential:errors"].value
    assert value is not None
    assert value > 1.2  # the odds ratio: far beyond the tolerance
    threshold = harm["sequential:errors"].threshold
    assert threshold.startswith("odds ratio <= 1.2x: harm e ")
    assert "95% simultaneous CS " in threshold

    safe = judging.results(_safe()[1])
    assert [(r.name, r.verdict) for r in safe] == [
        ("sequential:errors", "pass"),
        ("sequential:latency>0.25s", "pass"),
    ]
    assert all(r.value is not None and 0.9 < r.value < 1.1 for r in safe)
    assert all(r.stable_value is None for r in safe)


def test_a_result_has_a_finite_value_when_the_stable_has_no_events() -> None:
    traffic = Pair()
    baseline = traffic.now()
    traffic.serve((300, 30, 0), (2700, 0, 0))
    state, judgement = poll(None, traffic.now(), baseline)
    assert math.isinf(judgement.metrics[0].ratio)  # no stable errors: no point estimate
    errors, latency = judging.results(judgement)
    assert errors.reason == "canary 30/300 vs stable 0/2700"
    assert errors.value is not None
    assert math.isfinite(errors.value)
    # the lower end of the confidence sequence: "at least this much worse"
    assert errors.value == judgement.metrics[0].ci_low
    assert errors.value > 1.0
    # No request slower than 0.25s on either side: no estimate at all, and no made-up value.
    assert latency.reason == "canary 0/300 vs stable 0/2700"
    assert latency.value is None
    assert latency.verdict == "inconclusive"
    # The record is JSON a client can read (no Infinity or NaN).
    combined = judging.combine(threshold_verdict("pass"), judgement, state)
    json.dumps([c.value for c in combined.checks], allow_nan=False)


# ------------------------------------------------------------------ unavailable, all_safe


@pytest.mark.parametrize(
    ("threshold", "after"),
    [("pass", "inconclusive"), ("inconclusive", "inconclusive"), ("fail", "fail")],
)
def test_unavailable_counters_make_the_interval_inconclusive_but_keep_a_fail(
    threshold: Verdict, after: Verdict
) -> None:
    before = threshold_verdict(threshold)
    verdict = judging.unavailable(before, "cannot reach Prometheus at http://p:9090")
    assert verdict.verdict == after
    assert verdict.reason == (
        f"error-rate: {threshold}; sequential judge: counters unavailable: "
        "cannot reach Prometheus at http://p:9090"
    )
    assert verdict.checks == before.checks
    assert verdict.judgement is None
    assert verdict.judge_state is None  # the persisted evidence is left as it was


def test_all_safe_needs_safety_proven_for_every_metric() -> None:
    assert not judging.all_safe(None)
    assert not judging.all_safe(_undecided()[0])
    assert not judging.all_safe(_harm()[0])
    safe = _safe()[0]
    assert judging.all_safe(safe)
    # One metric still unproven is not enough.
    partly = replace(safe, metrics=(safe.metrics[0], replace(safe.metrics[1], safe=False)))
    assert not judging.all_safe(partly)


def _stored_with_version(version: object) -> str:
    """A rollout state as stored, its judge's evidence claiming ``version``."""
    data = json.loads(
        dumps(RolloutState(phase="progressing", revision="r", total=3, judge=_safe()[0]))
    )
    data["judge"]["version"] = version
    return json.dumps(data)


def test_evidence_from_an_older_daemon_starts_the_judge_afresh() -> None:
    """An upgrade mid-release drops the old format's evidence instead of failing the tick."""
    older = loads(_stored_with_version(STATE_VERSION - 1)).judge
    assert older is None
    assert not judging.all_safe(older)  # old proof is not carried over

    traffic = Pair()
    traffic.serve((500, 250, 0), (500, 5, 0))
    state, judgement = poll(older, traffic.now())
    fresh_state, fresh = poll(None, traffic.now())
    assert (state, judgement) == (fresh_state, fresh)
    assert state.polls == 1


def test_evidence_in_an_unknown_format_is_corrupt() -> None:
    for version in (STATE_VERSION + 1, "2", None, True):
        with pytest.raises(StateCorrupt, match=r"^judge.version: input should be 2, got "):
            loads(_stored_with_version(version))


def test_proven_safety_stays_proven_in_the_persisted_state() -> None:
    traffic = Pair()
    baseline = traffic.now()
    traffic.serve((20_000, 1000, 2000), (20_000, 1000, 2000))
    state, judgement = poll(None, traffic.now(), baseline)
    assert judgement.verdict is JudgeVerdict.PROMOTE
    # Later polls with a worse (but not provably harmful) canary keep the proof.
    traffic.serve((200, 14, 20), (200, 10, 20))
    state, judgement = poll(state, traffic.now())
    assert judgement.verdict is JudgeVerdict.PROMOTE
    assert judging.all_safe(state)


def test_harm_proven_reads_the_judgement() -> None:
    assert not judging.harm_proven(None)
    assert not judging.harm_proven(_undecided()[1])
    assert not judging.harm_proven(_safe()[1])
    assert judging.harm_proven(_harm()[1])


def test_the_critical_guard_is_harm_too() -> None:
    cfg = SequentialAnalysisConfig.model_validate({"criticalErrorExcess": "20%"})
    traffic = Pair()
    baseline = traffic.now()
    # 25 errors in 100 against the stable's 2 in 100: over it by more than 20 points.
    traffic.serve((100, 25, 0), (100, 2, 0))
    state, judgement = poll(None, traffic.now(), baseline, cfg)
    assert judgement.critical
    combined = judging.combine(threshold_verdict("pass"), judgement, state)
    assert combined.verdict == "fail"
    assert "critical guard" in combined.reason


def test_an_inconsistent_read_is_skipped_and_named_in_the_reason() -> None:
    traffic = Pair()
    baseline = traffic.now()
    traffic.serve((100, 2, 0), (900, 9, 0))
    state, _ = poll(None, traffic.now(), baseline)
    traffic.serve((100, 1, 0), (900, 9, 0))
    canary, stable = traffic.now()
    # the canary's error series missing once it has had errors: not read as 0 errors
    gap = CounterSnapshot({k: replace(s, errors=None) for k, s in canary.series.items()})
    state, judgement = poll(state, (gap, stable))
    assert judgement.skipped == (f"canary {POD_A}",)
    assert judgement.poll.canary_requests == 0  # nothing of the canary counted this poll
    combined = judging.combine(threshold_verdict("pass"), judgement, state)
    assert f"read incomplete or inconsistent: canary {POD_A}" in combined.reason
    # back next poll: both polls' canary traffic counted once
    _, judgement = poll(state, traffic.now())
    assert judgement.poll.canary_requests == 100
    assert judgement.metrics[0].canary_requests == 200
