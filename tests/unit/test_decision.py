"""The rollout state machine, driven tick after tick against a simulated cluster.

Each test moves an injected clock; :class:`builders.FakeCluster` applies the
Desired replica counts and templates the way Deployments would (pods Ready on
the next tick unless their revision is marked broken).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from builders import (
    ROLE_LABELS,
    T0,
    Driver,
    FakeCluster,
    TickRecord,
    always,
    interval_verdict,
    make_rollout,
    phase_is,
    pod_template,
    sequence,
    view,
)

from autocanary.analysis.verdict import Verdict
from autocanary.rollout.decision import (
    POLL,
    DeploymentView,
    Desired,
    Observation,
    analysis_due,
    decide,
    desired_for,
    next_analysis_at,
)
from autocanary.rollout.pods import ContainerView, PodView
from autocanary.rollout.revision import promoted_template, revision_of
from autocanary.rollout.state import Phase, RolloutState, dumps, loads

V2 = "registry.local/shop/web:2.0"
V3 = "registry.local/shop/web:3.0"


def started(total: int = 4, **rollout: object) -> Driver:
    """A driver whose canary has just been given a new revision (nothing decided yet)."""
    driver = Driver(make_rollout(**rollout), FakeCluster.create(total))
    driver.cluster.release(V2)
    return driver


def analysing(driver: Driver, step: int = 0) -> Driver:
    driver.run_until(
        lambda s: s.phase == "progressing" and s.step == step and s.stage == "analysing"
    )
    return driver


def ready_time(driver: Driver) -> datetime:
    """When the current step's canary pods were seen Ready."""
    assert driver.state.ready_at is not None
    return driver.state.ready_at


def reasons_of(record: TickRecord) -> list[str]:
    return [t.reason for t in record.decision.transitions]


# ------------------------------------------------------------------ release detection


def test_nothing_happens_while_the_canary_equals_the_stable() -> None:
    driver = Driver(make_rollout(), FakeCluster.create())
    for record in driver.run(5):
        assert record.decision.state == RolloutState()
        assert record.decision.desired == Desired()
        assert record.decision.transitions == ()
        assert record.decision.requeue_after is None
        assert not record.decision.consume_command


def test_a_new_canary_revision_starts_a_release() -> None:
    driver = started(total=4)
    original_stable = copy.deepcopy(driver.cluster.stable.template)
    record = driver.tick()
    state = record.decision.state
    assert state.phase == "progressing"
    assert state.revision == driver.cluster.canary_revision
    assert state.stable_revision == driver.cluster.stable_revision
    assert (state.canary_version, state.stable_version) == ("2.0", "1.0")
    assert state.stable_template == original_stable
    assert (state.total, state.step, state.stage) == (4, 0, "waitingReady")
    assert state.step_started_at == state.started_at == T0
    (detected,) = record.decision.transitions
    assert (detected.reason, detected.kind, detected.warning) == (
        "ReleaseDetected",
        "releaseDetected",
        False,
    )
    assert "canary 2.0" in detected.message
    assert "against stable 1.0" in detected.message
    assert "total 4 replicas, steps [1, 2, 4]" in detected.message
    # The stable keeps the total until the first canary pod is Ready.
    assert record.decision.desired == Desired(canary_replicas=1, stable_replicas=4)
    assert record.decision.requeue_after == POLL


def test_release_version_from_the_version_label() -> None:
    driver = Driver(make_rollout(), FakeCluster.create())
    driver.cluster.release(V2, version="v2-rc1")
    assert driver.tick().decision.state.canary_version == "v2-rc1"


def test_totals_are_fixed_at_release_start() -> None:
    driver = analysing(started(total=4))
    driver.cluster.stable.set_replicas(7)  # someone scales the stable by hand mid-release
    record = driver.tick()
    assert record.decision.state.total == 4
    assert record.decision.desired == Desired(canary_replicas=1, stable_replicas=3)


def test_desired_counts_are_reasserted_every_tick() -> None:
    driver = analysing(started())
    driver.cluster.canary.set_replicas(3)
    driver.cluster.settle()
    assert driver.tick().decision.desired.canary_replicas == 1


# ------------------------------------------------------------------ waiting for Ready


@pytest.mark.parametrize(
    ("canary", "ready"),
    [
        (view("web-canary", replicas=1, observed=False), False),
        (view("web-canary", replicas=1, ready=0), False),
        (view("web-canary", replicas=1, updated=0), False),
        # A Ready pod of an earlier template says nothing about the new one.
        (view("web-canary", replicas=1, ready=1, updated=1, current=2), False),
        (view("web-canary", replicas=1), True),
        (view("web-canary", replicas=2), True),
        # Seen the release's template; later generations (our own state writes, which
        # bump a Deployment's generation) need not be seen yet.
        (dataclasses.replace(view("web-canary", replicas=1), generation=3), True),
    ],
)
def test_waiting_ready(canary: DeploymentView, ready: bool) -> None:
    driver = started()
    first = driver.tick()
    # The views above count generations from the release's own one.
    shift = first.decision.state.canary_generation - 1
    canary = dataclasses.replace(
        canary,
        generation=canary.generation + shift,
        observed_generation=canary.observed_generation + shift,
    )
    obs = dataclasses.replace(first.obs, canary=canary)
    now = T0 + timedelta(seconds=10)
    decision = decide(driver.rollout, first.decision.state, obs, now)
    if ready:
        assert decision.state.stage == "analysing"
        assert decision.state.ready_at == now
        assert decision.desired == Desired(canary_replicas=1, stable_replicas=3)
    else:
        assert decision.state == first.decision.state
        assert decision.desired == Desired(canary_replicas=1, stable_replicas=4)
        assert decision.requeue_after == POLL
    assert decision.transitions == ()


def test_canary_never_ready_rolls_back_after_the_progress_deadline() -> None:
    driver = started()  # progressDeadline 5m, ticks every 10s
    driver.cluster.broken.add(driver.cluster.canary_revision)
    record = driver.run_until(phase_is("rollingBack"))
    assert record.now == T0 + timedelta(minutes=5, seconds=10)  # strictly past the deadline
    deadline, rolled_back = record.decision.transitions
    assert (deadline.reason, deadline.kind, deadline.warning) == (
        "ProgressDeadlineExceeded",
        "progressDeadlineExceeded",
        True,
    )
    assert "canary pods not Ready at step 1/3 (1 canary pods) (0/1 ready)" in deadline.message
    assert "within progressDeadline 5m" in deadline.message
    assert (rolled_back.reason, rolled_back.kind, rolled_back.warning) == (
        "RolledBack",
        "rolledBack",
        True,
    )
    assert record.decision.desired == Desired(canary_replicas=0, stable_replicas=4)
    state = record.decision.state
    assert state.rolled_back_revision == state.revision
    assert state.finished_at == record.now
    done = driver.tick()
    assert done.decision.state.phase == "rolledBack"
    assert done.decision.transitions == ()
    assert driver.cluster.canary.replicas == 0
    assert driver.cluster.stable.replicas == 4


def test_canary_losing_readiness_while_analysing_rolls_back_after_the_deadline() -> None:
    driver = analysing(started(steps=[{"canary": 1, "hold": "1h"}]))
    driver.cluster.broken.add(driver.cluster.canary_revision)
    driver.cluster.canary.set_template({})  # its pods get replaced ...
    driver.cluster.canary.set_template(pod_template(V2, track="canary"))  # ... by unready ones
    lost = driver.tick()
    assert lost.decision.state.not_ready_since == lost.now
    assert lost.verdict is None  # no analysis on an unready canary
    record = driver.run_until(phase_is("rollingBack"))
    assert record.now - lost.now == timedelta(minutes=5, seconds=10)
    assert reasons_of(record) == ["ProgressDeadlineExceeded", "RolledBack"]
    assert "canary pods not Ready for 5m10s in all at step 1/1" in (
        record.decision.transitions[0].message
    )


def test_canary_recovering_before_the_deadline_clears_the_clock() -> None:
    driver = analysing(started(steps=[{"canary": 1, "hold": "1h"}]))
    revision = driver.cluster.canary_revision
    driver.cluster.broken.add(revision)
    driver.cluster.canary.set_template({})
    driver.cluster.canary.set_template(pod_template(V2, track="canary"))
    driver.run(3)
    assert driver.state.not_ready_since is not None
    driver.cluster.broken.discard(revision)
    driver.run(2)
    assert driver.state.not_ready_since is None
    assert driver.state.phase == "progressing"


def test_canary_flapping_between_ready_and_not_does_not_reset_the_deadline() -> None:
    driver = analysing(started(steps=[{"canary": 1, "hold": "1h"}]))  # progressDeadline 5m
    revision = driver.cluster.canary_revision
    start = driver.now
    for _ in range(100):
        # 40s not Ready, 20s Ready, over and over: never 5m at a stretch.
        driver.cluster.broken.add(revision)
        driver.cluster.canary.set_template({})
        driver.cluster.canary.set_template(pod_template(V2, track="canary"))
        driver.run(4)
        if driver.state.phase != "progressing":
            break
        driver.cluster.broken.discard(revision)
        driver.run(2)
    assert driver.state.phase in ("rollingBack", "rolledBack")
    assert "ProgressDeadlineExceeded" in driver.reasons()
    # 5m of not Ready in 40s spells: the 8th spell, about 7.5 minutes after the first.
    assert driver.now - start < timedelta(minutes=9)


def crashing_pod(version: str = "2.0", **container: Any) -> PodView:
    fields: dict[str, Any] = {"name": "app", "restarts": 3, "waiting_reason": "CrashLoopBackOff"}
    fields.update(container)
    return PodView("web-canary-7d9f-abcde", {}, version, False, (ContainerView(**fields),))


@pytest.mark.parametrize(
    ("container", "says"),
    [
        (
            {"waiting_reason": "CrashLoopBackOff", "restarts": 2, "last_exit_code": 3},
            "container app CrashLoopBackOff (restarted 2 times; last exit code 3)",
        ),
        (
            {"waiting_reason": "ImagePullBackOff", "restarts": 0, "waiting_message": "no such"},
            "container app ImagePullBackOff (no such)",
        ),
        ({"waiting_reason": "ErrImagePull", "restarts": 0}, "container app ErrImagePull"),
    ],
)
def test_a_canary_pod_that_cannot_run_rolls_back_at_once(
    container: dict[str, Any], says: str
) -> None:
    driver = started()  # progressDeadline 5m
    driver.cluster.broken.add(driver.cluster.canary_revision)
    driver.run(2)
    assert driver.state.stage == "waitingReady"
    driver.cluster.canary_pods = (crashing_pod(**container),)
    record = driver.tick()
    assert record.decision.state.phase == "rollingBack"
    assert record.now - T0 < timedelta(minutes=1)
    pod_failed, rolled_back = record.decision.transitions
    assert (pod_failed.reason, pod_failed.kind, pod_failed.warning) == (
        "CanaryPodFailed",
        None,
        True,
    )
    assert pod_failed.message.startswith(f"canary pod web-canary-7d9f-abcde: {says}")
    assert pod_failed.message.endswith("at step 1/3 (1 canary pods)")
    assert (rolled_back.reason, rolled_back.kind) == ("RolledBack", "rolledBack")
    assert rolled_back.message == pod_failed.message
    assert record.decision.desired == Desired(canary_replicas=0, stable_replicas=4)


def test_restarts_beyond_max_restarts_roll_back_while_analysing() -> None:
    driver = analysing(started(steps=[{"canary": 1, "hold": "1h"}], maxRestarts=2))
    running = {"waiting_reason": None, "ready": True}
    driver.cluster.canary_pods = (crashing_pod(restarts=2, **running),)
    driver.run(3)
    assert driver.state.phase == "progressing", "2 restarts are within maxRestarts 2"
    driver.cluster.canary_pods = (crashing_pod(restarts=3, last_exit_code=137, **running),)
    record = driver.tick()
    assert reasons_of(record) == ["CanaryPodFailed", "RolledBack"]
    assert (
        "canary pod web-canary-7d9f-abcde: restarted 3 times (maxRestarts 2); "
        "container app ready (restarted 3 times; last exit code 137)"
    ) in record.decision.transitions[0].message


def test_pods_of_another_version_or_being_deleted_are_not_judged() -> None:
    driver = analysing(started(steps=[{"canary": 1, "hold": "1h"}]))
    gone = dataclasses.replace(crashing_pod(), deleting=True)
    driver.cluster.canary_pods = (crashing_pod(version="1.5"), gone)
    driver.run(3)
    assert driver.state.phase == "progressing"
    assert "CanaryPodFailed" not in driver.reasons()


# ------------------------------------------------------------------ analysis timing


def analysing_state(**changes: Any) -> RolloutState:
    base = RolloutState(
        phase="progressing",
        revision="rev2",
        stable_revision="rev1",
        total=4,
        stage="analysing",
        step_started_at=T0,
        ready_at=T0,
    )
    return dataclasses.replace(base, **changes)


def observation(canary_ready: int = 1, canary_revision: str = "rev2") -> Observation:
    return Observation(
        stable=view("web", replicas=3),
        canary=view("web-canary", pod_template(V2, track="canary"), 1, ready=canary_ready),
        stable_revision="rev1",
        canary_revision=canary_revision,
        stable_version="1.0",
        canary_version="2.0",
        role_labels=ROLE_LABELS,
    )


def test_analysis_waits_for_warmup_and_one_interval() -> None:
    rollout = make_rollout(analysis={"warmup": "20s"})  # interval 30s
    state = analysing_state()
    obs = observation()
    assert not analysis_due(rollout, state, obs, T0 + timedelta(seconds=49))
    assert analysis_due(rollout, state, obs, T0 + timedelta(seconds=50))
    assert next_analysis_at(rollout, state) == T0 + timedelta(seconds=50)


def test_the_first_analysis_waits_for_a_whole_window_after_warmup() -> None:
    # A window longer than the interval (a slow scrape) must hold post-warm-up data only.
    rollout = make_rollout(analysis={"warmup": "20s", "window": "2m"})  # interval 30s
    state = analysing_state()
    obs = observation()
    assert not analysis_due(rollout, state, obs, T0 + timedelta(seconds=139))
    assert analysis_due(rollout, state, obs, T0 + timedelta(seconds=140))
    assert next_analysis_at(rollout, state) == T0 + timedelta(seconds=140)
    last = T0 + timedelta(seconds=140)
    later = analysing_state(last_analysis_at=last)
    # ...then once per interval, windows overlapping.
    assert next_analysis_at(rollout, later) == last + timedelta(seconds=30)


def test_analysis_then_runs_once_per_interval() -> None:
    rollout = make_rollout()
    last = T0 + timedelta(seconds=40)
    state = analysing_state(last_analysis_at=last)
    obs = observation()
    # 90% of the interval: a tick firing slightly early still counts.
    assert not analysis_due(rollout, state, obs, last + timedelta(seconds=26))
    assert analysis_due(rollout, state, obs, last + timedelta(seconds=27))
    # ...but the next one is planned a whole interval on, so windows never overlap.
    assert next_analysis_at(rollout, state) == last + timedelta(seconds=30)


@pytest.mark.parametrize(
    ("state", "obs"),
    [
        (analysing_state(stage="waitingReady"), observation()),
        (analysing_state(ready_at=None), observation()),
        (analysing_state(phase="paused"), observation()),
        (analysing_state(phase="promoting"), observation()),
        (analysing_state(phase="idle"), observation()),
        (analysing_state(), observation(canary_ready=0)),
        (analysing_state(), observation(canary_revision="rev3")),
    ],
)
def test_no_analysis_outside_a_ready_analysing_step(state: RolloutState, obs: Observation) -> None:
    assert not analysis_due(make_rollout(), state, obs, T0 + timedelta(hours=1))


def test_verdicts_are_requested_only_after_warmup_and_then_per_interval() -> None:
    driver = started(analysis={"warmup": "20s"}, steps=[{"canary": 1, "hold": "10m"}])
    ready = ready_time(analysing(driver))
    driver.run(30)
    times = [r.now for r in driver.history if r.verdict is not None]
    assert times[0] == ready + timedelta(seconds=50)
    assert all(b - a == timedelta(seconds=30) for a, b in itertools.pairwise(times))


def test_requeue_points_at_the_next_analysis() -> None:
    driver = started(steps=[{"canary": 1, "hold": "10m"}])
    ready = ready_time(analysing(driver))
    following = driver.tick()
    assert following.now == ready + timedelta(seconds=10)
    assert following.decision.requeue_after == timedelta(seconds=20)  # due 30s after Ready


# ------------------------------------------------------------------ passing, holding, advancing


def test_a_pass_advances_only_once_the_hold_has_elapsed() -> None:
    driver = started()  # hold 1m, interval 30s
    ready = ready_time(analysing(driver))
    record = driver.run_until(lambda s: s.step == 1)
    assert record.now == ready + timedelta(minutes=1)
    verdicts = [r for r in driver.history if r.verdict is not None]
    assert [r.now - ready for r in verdicts] == [timedelta(seconds=30), timedelta(seconds=60)]
    assert reasons_of(verdicts[0]) == []
    (advanced,) = record.decision.transitions
    assert (advanced.reason, advanced.kind) == ("StepAdvanced", "stepAdvanced")
    assert "advanced to step 2/3 (2 canary pods) after step 1 held 1m" in advanced.message
    assert "with 2 passing interval(s)" in advanced.message
    state = record.decision.state
    assert (state.stage, state.step_started_at, state.ready_at, state.step_passes) == (
        "waitingReady",
        record.now,
        None,
        0,
    )
    assert record.decision.desired == Desired(canary_replicas=2, stable_replicas=3)


def test_an_elapsed_hold_still_needs_a_pass() -> None:
    driver = started(steps=[{"canary": 1, "hold": "0s"}, {"canary": "100%"}])
    ready = ready_time(analysing(driver))
    record = driver.run_until(lambda s: s.step == 1)
    assert record.now == ready + timedelta(seconds=30)
    assert record.verdict is not None


def test_the_hold_can_end_between_analyses() -> None:
    driver = started(steps=[{"canary": 1, "hold": "45s"}, {"canary": "100%"}])
    ready = ready_time(analysing(driver))
    first_pass = driver.run_until(lambda s: s.step_passes == 1)
    assert first_pass.now == ready + timedelta(seconds=30)
    assert first_pass.decision.requeue_after == timedelta(seconds=15)  # the hold ends first
    record = driver.run_until(lambda s: s.step == 1)
    assert record.now == ready + timedelta(seconds=50)  # first tick past the hold
    assert record.verdict is None


def test_full_release_is_promoted() -> None:
    driver = started(total=4)
    record = driver.run_until(phase_is("succeeded"))
    assert driver.reasons() == [
        "ReleaseDetected",
        "StepAdvanced",
        "StepAdvanced",
        "Promoting",
        "Promoted",
    ]
    (promoted,) = record.decision.transitions
    assert (promoted.reason, promoted.kind) == ("Promoted", "promoted")
    assert "to the stable Deployment web with 4 replicas; canary scaled to 0" in promoted.message
    state = record.decision.state
    assert state.finished_at == record.now
    cluster = driver.cluster
    assert cluster.stable.template["spec"]["containers"][0]["image"] == V2
    assert cluster.stable.template["metadata"]["labels"]["track"] == "stable"
    assert (cluster.stable.replicas, cluster.canary.replicas) == (4, 0)
    assert cluster.stable_revision == cluster.canary_revision == state.revision
    # Settled: nothing more to do, no new release.
    for later in driver.run(5):
        assert later.decision.transitions == ()
        assert later.decision.state.phase == "succeeded"
        assert later.decision.desired == Desired(canary_replicas=0)


# ------------------------------------------------------------------ failing


def test_a_fail_at_failure_limit_zero_rolls_back() -> None:
    driver = started()
    driver.verdicts = always("fail")
    record = driver.run_until(phase_is("rollingBack"))
    assert reasons_of(record) == ["AnalysisFailed", "RolledBack"]
    failed, rolled_back = record.decision.transitions
    assert failed.kind == "analysisFailed"
    assert failed.checks[0].verdict == "fail"
    assert rolled_back.checks == failed.checks
    assert "(1 failed interval(s), failureLimit 0)" in rolled_back.message
    assert record.decision.desired == Desired(canary_replicas=0, stable_replicas=4)
    assert record.decision.state.failures == 1
    assert driver.tick().decision.state.phase == "rolledBack"


def test_failures_under_the_limit_do_not_roll_back() -> None:
    driver = started(analysis={"failureLimit": 1})
    driver.verdicts = sequence("fail")
    record = driver.run_until(phase_is("succeeded"))
    assert driver.reasons().count("AnalysisFailed") == 1
    assert "RolledBack" not in driver.reasons()
    assert record.decision.state.failures == 1


def test_failures_count_across_steps_of_a_release() -> None:
    driver = started(analysis={"failureLimit": 1})
    driver.verdicts = sequence("fail", "pass", "pass", "fail")
    record = driver.run_until(phase_is("rollingBack"))
    assert record.decision.state.step == 1
    assert driver.reasons() == [
        "ReleaseDetected",
        "AnalysisFailed",
        "StepAdvanced",
        "AnalysisFailed",
        "RolledBack",
    ]


def _judged(driver: Driver, count: int) -> list[TickRecord]:
    """Tick until ``count`` more intervals have been judged; those ticks."""
    judged: list[TickRecord] = []
    while len(judged) < count:
        record = driver.tick()
        if record.verdict is not None:
            judged.append(record)
    return judged


def test_failed_intervals_that_share_their_window_count_once() -> None:
    # Four 30s scrapes against a 30s interval: each window reaches 2m back, so one
    # unlucky minute fails four intervals in a row. They are one piece of evidence.
    driver = analysing(started(interval="30s", analysis={"failureLimit": 1}))
    driver.tick_every, driver.window = timedelta(seconds=30), timedelta(minutes=2)
    driver.verdicts = always("fail")
    judged = _judged(driver, 4)
    assert [r.now - judged[0].now for r in judged] == [timedelta(seconds=30 * i) for i in range(4)]
    assert driver.state.phase == "progressing"
    assert driver.state.failures == 1
    told = [t.message for r in judged for t in r.decision.transitions]
    assert len(told) == 4
    assert all(m.startswith("analysis failed") for m in told)
    overlapping = [m.endswith("overlaps the last failed interval's)") for m in told]
    assert overlapping == [False, True, True, True]

    # The next, whose window starts where the first counted one ended, is new evidence.
    [record] = _judged(driver, 1)
    assert record.now - judged[0].now == timedelta(minutes=2)
    assert record.decision.state.phase == "rollingBack"
    assert "(2 failed interval(s), failureLimit 1)" in record.decision.transitions[-1].message


def test_failed_intervals_whose_windows_do_not_overlap_each_count() -> None:
    driver = analysing(started(interval="30s", analysis={"failureLimit": 1}))
    driver.tick_every, driver.window = timedelta(seconds=30), timedelta(seconds=30)
    driver.verdicts = always("fail")
    first, second = _judged(driver, 2)
    assert first.decision.state.failures == 1
    assert second.now - first.now == timedelta(seconds=30)
    assert second.decision.state.phase == "rollingBack"


# ------------------------------------------------------------------ inconclusive


def test_inconclusive_never_advances_nor_promotes() -> None:
    driver = started(steps=[{"canary": "100%", "hold": "0s"}], analysis={"inconclusiveLimit": 1000})
    driver.verdicts = always("inconclusive")
    driver.run(200)
    assert driver.state.phase == "progressing"
    assert set(driver.reasons()) == {"ReleaseDetected", "AnalysisInconclusive"}
    assert driver.state.inconclusive == driver.reasons().count("AnalysisInconclusive") > 50


def test_an_inconclusive_last_interval_blocks_advancing_after_the_hold() -> None:
    driver = started()  # hold 1m
    driver.verdicts = sequence("pass", "inconclusive", "pass")
    ready = ready_time(analysing(driver))
    record = driver.run_until(lambda s: s.step == 1)
    assert record.now == ready + timedelta(seconds=90)


def test_inconclusive_past_the_limit_pauses_by_default() -> None:
    driver = started(analysis={"inconclusiveLimit": 3})
    driver.verdicts = always("inconclusive")
    record = driver.run_until(phase_is("paused"))
    assert driver.reasons() == ["ReleaseDetected"] + ["AnalysisInconclusive"] * 4 + ["Paused"]
    unsure, paused = record.decision.transitions
    assert (unsure.kind, paused.kind, paused.warning) == ("inconclusive", "paused", True)
    assert "4 inconclusive intervals in a row (inconclusiveLimit 3)" in paused.message
    assert paused.checks
    assert paused.checks[0].verdict == "inconclusive"
    # Paused: replicas left alone, no more analysis, no repeated alerts.
    assert record.decision.desired == Desired()
    for later in driver.run(20):
        assert later.verdict is None
        assert later.decision.transitions == ()
        assert later.decision.state.phase == "paused"
    assert (driver.cluster.canary.replicas, driver.cluster.stable.replicas) == (1, 3)


def test_inconclusive_past_the_limit_rolls_back_with_that_policy() -> None:
    driver = started(analysis={"inconclusiveLimit": 2, "inconclusivePolicy": "rollback"})
    driver.verdicts = always("inconclusive")
    record = driver.run_until(phase_is("rollingBack"))
    assert reasons_of(record) == ["AnalysisInconclusive", "RolledBack"]
    assert "3 inconclusive intervals in a row (inconclusiveLimit 2)" in (
        record.decision.transitions[1].message
    )
    assert record.decision.desired == Desired(canary_replicas=0, stable_replicas=4)


def test_inconclusive_limit_counts_consecutive_intervals() -> None:
    driver = started(steps=[{"canary": 1, "hold": "1h"}], analysis={"inconclusiveLimit": 2})
    driver.verdicts = sequence(
        "inconclusive", "inconclusive", "pass", "inconclusive", "inconclusive", then="pass"
    )
    driver.run(60)
    assert driver.state.phase == "progressing"
    assert driver.reasons().count("AnalysisInconclusive") == 4


# ------------------------------------------------------------------ commands


def reach(phase: str) -> tuple[Driver, RolloutState, Observation]:
    """A driver, a state in ``phase`` and the observation the next tick would make."""
    if phase == "idle":
        driver = Driver(make_rollout(), FakeCluster.create())
        return driver, driver.state, driver.cluster.observe()
    driver = analysing(started())
    if phase == "progressing":
        return driver, driver.state, driver.cluster.observe()
    if phase in ("paused", "promoting"):
        driver.tick({"paused": "pause", "promoting": "promote"}[phase])
        assert driver.state.phase == phase
        return driver, driver.state, driver.cluster.observe()
    record = driver.tick("abort")
    if phase == "rollingBack":
        # As observed before the rollback was applied: the canary still has its pod.
        return driver, record.decision.state, dataclasses.replace(record.obs, command=None)
    if phase == "rolledBack":
        driver.tick()
        assert driver.state.phase == "rolledBack"
        return driver, driver.state, driver.cluster.observe()
    assert phase == "succeeded"
    driver = started()
    driver.run_until(phase_is("succeeded"))
    return driver, driver.state, driver.cluster.observe()


COMMAND_CASES = [
    # phase, command, resulting phase, ignored
    *[("idle", c, "idle", True) for c in ("promote", "abort", "retry", "pause", "resume")],
    ("progressing", "abort", "rollingBack", False),
    ("progressing", "promote", "promoting", False),
    ("progressing", "pause", "paused", False),
    ("progressing", "resume", "progressing", True),
    ("progressing", "retry", "progressing", True),
    ("paused", "resume", "progressing", False),
    ("paused", "abort", "rollingBack", False),
    ("paused", "promote", "promoting", False),
    ("paused", "pause", "paused", True),
    ("paused", "retry", "paused", True),
    ("promoting", "abort", "rollingBack", False),
    *[("promoting", c, "promoting", True) for c in ("promote", "retry", "pause", "resume")],
    *[
        ("rollingBack", c, "rollingBack", True)
        for c in ("promote", "abort", "retry", "pause", "resume")
    ],
    ("rolledBack", "retry", "progressing", False),
    *[("rolledBack", c, "rolledBack", True) for c in ("promote", "abort", "pause", "resume")],
    *[
        ("succeeded", c, "succeeded", True)
        for c in ("promote", "abort", "retry", "pause", "resume")
    ],
]


@pytest.mark.parametrize(("phase", "command", "after", "ignored"), COMMAND_CASES)
def test_commands_in_each_phase(phase: str, command: str, after: str, ignored: bool) -> None:
    driver, state, obs = reach(phase)
    assert state.phase == phase
    decision = decide(driver.rollout, state, dataclasses.replace(obs, command=command), driver.now)
    assert decision.consume_command, "every command is consumed, applied or not"
    assert decision.state.phase == after
    notes = [t for t in decision.transitions if t.reason == "CommandIgnored"]
    assert bool(notes) == ignored
    if ignored:
        assert notes[0].warning
        assert notes[0].kind is None
        assert f"command {command!r} ignored" in notes[0].message


def test_command_transitions() -> None:
    _, state, obs = reach("progressing")
    rollout = make_rollout()
    paused = decide(rollout, state, dataclasses.replace(obs, command="pause"), T0)
    assert [(t.reason, t.kind) for t in paused.transitions] == [("Paused", "paused")]
    assert "paused by command at step 1/3" in paused.transitions[0].message
    resumed = decide(rollout, paused.state, obs, T0 + timedelta(minutes=1))
    assert resumed.state.phase == "paused"  # no command: stays paused
    resumed = decide(
        rollout, paused.state, dataclasses.replace(obs, command="resume"), T0 + timedelta(hours=1)
    )
    assert [(t.reason, t.kind) for t in resumed.transitions] == [("Resumed", "resumed")]
    state = resumed.state
    assert (state.stage, state.step_started_at, state.step_passes, state.inconclusive) == (
        "waitingReady",
        T0 + timedelta(hours=1),
        0,
        0,
    )
    aborted = decide(rollout, state, dataclasses.replace(obs, command="abort"), T0)
    assert [t.reason for t in aborted.transitions] == ["RolledBack"]
    assert aborted.transitions[0].message == "aborted by command"


def test_unknown_command_is_ignored_and_consumed() -> None:
    driver, state, obs = reach("progressing")
    plain = decide(driver.rollout, state, obs, driver.now)
    decision = decide(driver.rollout, state, dataclasses.replace(obs, command="promte"), driver.now)
    assert decision.consume_command
    assert decision.state == plain.state
    assert decision.desired == plain.desired
    (note,) = decision.transitions
    assert note.reason == "CommandIgnored"
    assert "unknown command; use one of promote, abort, retry, pause, resume" in note.message


def test_a_huge_unknown_command_is_quoted_only_in_part() -> None:
    driver, state, obs = reach("progressing")
    command = "x" * 200_000
    decision = decide(driver.rollout, state, dataclasses.replace(obs, command=command), T0)
    (note,) = decision.transitions
    assert note.message.startswith(f"command {'x' * 64!r}... (200000 characters) ignored")
    assert len(note.message) < 300


def test_commands_are_trimmed_and_blank_is_no_command() -> None:
    driver, state, obs = reach("progressing")
    decision = decide(driver.rollout, state, dataclasses.replace(obs, command=" pause\n"), T0)
    assert decision.state.phase == "paused"
    blank = decide(driver.rollout, state, dataclasses.replace(obs, command="  "), T0)
    assert not blank.consume_command


def test_commands_with_a_new_revision_apply_to_the_new_release() -> None:
    driver = started()
    promote = decide(
        driver.rollout,
        driver.state,
        dataclasses.replace(driver.cluster.observe(), command="promote"),
        T0,
    )
    assert promote.state.phase == "promoting"
    assert [t.reason for t in promote.transitions] == ["ReleaseDetected", "Promoting"]
    abort = decide(
        driver.rollout,
        driver.state,
        dataclasses.replace(driver.cluster.observe(), command="abort"),
        T0,
    )
    assert abort.state.phase == "rollingBack"
    assert [t.reason for t in abort.transitions] == ["ReleaseDetected", "RolledBack"]


def test_the_driver_consumes_commands() -> None:
    driver = analysing(started())
    driver.tick("pause")
    assert driver.cluster.command is None
    assert driver.state.phase == "paused"


# ------------------------------------------------------------------ rolled-back revisions


def rolled_back() -> Driver:
    driver = started()
    driver.verdicts = always("fail")
    driver.run_until(phase_is("rolledBack"))
    driver.verdicts = always("pass")
    return driver


def test_a_rolled_back_revision_is_not_retried_by_itself() -> None:
    driver = rolled_back()
    revision = driver.state.revision
    assert driver.state.rolled_back_revision == revision
    for record in driver.run(50):
        assert record.decision.transitions == ()
        assert record.decision.state.phase == "rolledBack"
    assert driver.cluster.canary.replicas == 0
    assert driver.cluster.canary_revision == revision


def test_retry_restarts_a_rolled_back_revision() -> None:
    driver = rolled_back()
    revision = driver.state.revision
    record = driver.tick("retry")
    assert reasons_of(record) == ["ReleaseDetected"]
    assert record.decision.transitions[0].message.startswith("retry requested: ")
    assert record.decision.state.revision == revision
    assert record.decision.state.failures == 0
    driver.run_until(phase_is("succeeded"))


def test_a_changed_revision_after_a_rollback_is_released() -> None:
    driver = rolled_back()
    driver.cluster.release(V3)
    record = driver.tick()
    assert reasons_of(record) == ["ReleaseDetected"]
    assert record.decision.state.canary_version == "3.0"


def test_reverting_the_canary_after_a_rollback_is_quiet() -> None:
    driver = rolled_back()
    driver.cluster.release(driver.cluster.stable.template["spec"]["containers"][0]["image"])
    for record in driver.run(5):
        assert record.decision.transitions == ()


# ------------------------------------------------------------------ changes mid-release


def test_a_new_canary_revision_mid_release_restarts_with_the_same_total() -> None:
    driver = analysing(started(total=4), step=1)  # canary 2, stable 2
    driver.cluster.release(V3)
    record = driver.tick()
    assert reasons_of(record) == ["ReleaseDetected"]
    assert record.decision.transitions[0].message.startswith(
        "release superseded by a new canary revision: canary 3.0"
    )
    state = record.decision.state
    assert (state.phase, state.step, state.stage, state.total) == (
        "progressing",
        0,
        "waitingReady",
        4,
    )
    assert state.revision == driver.cluster.canary_revision
    assert state.verdicts == ()
    assert record.decision.desired == Desired(canary_replicas=1, stable_replicas=4)


def test_a_broken_superseding_revision_is_not_mistaken_for_ready() -> None:
    driver = analysing(started(total=4), step=1)
    driver.cluster.release(V3)
    driver.cluster.broken.add(driver.cluster.canary_revision)
    superseded = len(driver.history)
    record = driver.run_until(phase_is("rollingBack"))
    assert reasons_of(record) == ["ProgressDeadlineExceeded", "RolledBack"]
    waiting = driver.history[superseded:-1]
    assert reasons_of(waiting[0]) == ["ReleaseDetected"]
    # The previous release's Ready canary pods linger, yet the step never counts as Ready.
    assert all(r.obs.canary.ready >= 1 for r in waiting[1:])
    assert all(r.decision.state.stage == "waitingReady" for r in waiting)
    assert all(r.verdict is None for r in waiting)


def test_a_new_revision_while_paused_restarts() -> None:
    driver, _, _ = reach("paused")
    driver.cluster.release(V3)
    record = driver.tick()
    assert reasons_of(record) == ["ReleaseDetected"]
    assert record.decision.state.phase == "progressing"
    assert record.decision.state.total == 4


def test_canary_reverted_to_the_stable_mid_release_rolls_back() -> None:
    driver = analysing(started(), step=1)
    revision = driver.state.revision
    driver.cluster.release(driver.cluster.stable.template["spec"]["containers"][0]["image"])
    record = driver.tick()
    assert reasons_of(record) == ["RolledBack"]
    assert (
        record.decision.transitions[0].message == "the canary template was reverted to the stable's"
    )
    assert record.decision.state.rolled_back_revision == revision
    assert record.decision.desired == Desired(canary_replicas=0, stable_replicas=4)
    assert driver.tick().decision.state.phase == "rolledBack"


def test_a_config_reload_with_fewer_steps_does_not_crash() -> None:
    driver = analysing(started(), step=2)
    driver.rollout = make_rollout(steps=[{"canary": 1, "hold": "1m"}])
    record = driver.tick()
    assert record.decision.state.phase in ("progressing", "promoting")
    assert record.decision.state.step == 0


# ------------------------------------------------------------------ promotion


def test_promotion_keeps_capacity_and_hands_over_in_order() -> None:
    driver = analysing(started(total=4), step=2)  # 4 canary pods, 0 stable
    original = copy.deepcopy(driver.cluster.stable.template)
    canary_template = copy.deepcopy(driver.cluster.canary.template)
    # The stable's rollout takes a while: the canary keeps all its pods meanwhile.
    driver.cluster.stuck.add(driver.cluster.canary_revision)
    record = driver.run_until(phase_is("promoting"))
    promoting = record.decision.transitions[-1]
    assert (promoting.reason, promoting.kind) == ("Promoting", None)
    expected_template = promoted_template(original, canary_template, ROLE_LABELS)
    assert expected_template["metadata"]["labels"]["track"] == "stable"
    assert record.decision.desired == Desired(stable_replicas=4, stable_template=expected_template)
    assert revision_of(expected_template, ROLE_LABELS) == driver.cluster.canary_revision
    for waiting in driver.run(5):
        assert waiting.decision.state.phase == "promoting"
        assert waiting.decision.desired.canary_replicas is None
        assert waiting.canary_spec == 4
        assert waiting.decision.desired.stable_template is None  # applied once, not re-sent
    driver.cluster.stuck.clear()
    complete = driver.run_until(lambda s: driver.cluster.canary.replicas == 0)
    assert complete.decision.state.phase == "promoting"
    assert complete.decision.desired == Desired(canary_replicas=0, stable_replicas=4)
    done = driver.tick()
    assert done.decision.state.phase == "succeeded"
    assert reasons_of(done) == ["Promoted"]
    assert all(r.serving_after_apply >= 4 for r in driver.history)


def test_promote_command_early_in_a_release_keeps_the_canary_until_the_stable_is_done() -> None:
    driver = analysing(started(total=4))  # canary 1, stable 3
    record = driver.tick("promote")
    assert record.decision.state.phase == "promoting"
    assert record.decision.desired.stable_replicas == 4
    assert record.decision.desired.canary_replicas is None
    driver.run_until(phase_is("succeeded"))
    assert all(r.serving_after_apply >= 4 for r in driver.history)
    assert driver.cluster.stable.template["spec"]["containers"][0]["image"] == V2


def test_promotion_past_the_deadline_rolls_back_and_restores_the_stable() -> None:
    driver = analysing(started(total=4), step=2)
    original = copy.deepcopy(driver.cluster.stable.template)
    original_revision = driver.cluster.stable_revision
    driver.cluster.stuck.add(driver.cluster.canary_revision)  # the stable never finishes
    begun = driver.run_until(phase_is("promoting"))
    record = driver.run_until(phase_is("rollingBack"))
    first_promoting_tick = begun.now + driver.tick_every
    assert record.now - first_promoting_tick == timedelta(minutes=5, seconds=10)
    assert reasons_of(record) == ["ProgressDeadlineExceeded", "RolledBack"]
    assert "the stable Deployment did not finish rolling out revision" in (
        record.decision.transitions[0].message
    )
    assert record.decision.desired == Desired(
        canary_replicas=0, stable_replicas=4, stable_template=original
    )
    done = driver.run_until(phase_is("rolledBack"))
    assert done.decision.state.rolled_back_revision == done.decision.state.revision
    assert driver.cluster.stable_revision == original_revision
    assert driver.cluster.stable.template == original
    assert (driver.cluster.stable.replicas, driver.cluster.canary.replicas) == (4, 0)


def test_abort_during_promotion_restores_the_stable() -> None:
    driver, state, obs = reach("promoting")
    original = state.stable_template
    # Observed mid-promotion: the stable already carries the canary's template.
    assert obs.stable_revision == state.revision
    decision = decide(driver.rollout, state, dataclasses.replace(obs, command="abort"), driver.now)
    assert decision.state.phase == "rollingBack"
    assert decision.desired.stable_template == original


def test_gitops_reverting_the_stable_after_success_is_not_a_release() -> None:
    driver = started()
    driver.run_until(phase_is("succeeded"))
    driver.cluster.stable.set_template(pod_template())  # the old manifest applied again
    for record in driver.run(5):
        assert record.decision.transitions == ()
        assert record.decision.state.phase == "succeeded"


# ------------------------------------------------------------------ capacity


@pytest.mark.parametrize("total", [1, 3, 10])
def test_scale_down_stable_keeps_the_total(total: int) -> None:
    driver = started(
        total=total,
        steps=[
            {"canary": 1, "hold": "30s"},
            {"canary": "10%", "hold": "30s"},
            {"canary": "50%", "hold": "30s"},
            {"canary": "100%", "hold": "30s"},
        ],
    )
    driver.run_until(phase_is("succeeded"))
    for record in driver.history:
        state = record.decision.state
        assert record.serving_after_apply >= total
        if state.phase == "progressing":
            assert record.stable_spec + record.canary_spec >= total
            if state.stage == "analysing":
                assert record.stable_spec + record.canary_spec == total
    assert (driver.cluster.stable.replicas, driver.cluster.canary.replicas) == (total, 0)


def test_surge_keeps_the_stable_at_total() -> None:
    driver = started(total=4, scale_down_stable=False)
    driver.run_until(phase_is("succeeded"))
    canary_sizes = []
    for record in driver.history:
        assert record.stable_spec == 4
        if record.decision.state.phase == "progressing":
            assert record.decision.desired.stable_replicas == 4
            canary_sizes.append(record.canary_spec)
    assert sorted(set(canary_sizes)) == [1, 2, 4]


def test_desired_for_settled_phases() -> None:
    rollout = make_rollout()
    obs = observation()
    assert desired_for(rollout, RolloutState(), obs) == Desired()
    phases: tuple[Phase, ...] = ("succeeded", "rolledBack")
    for phase in phases:
        state = RolloutState(phase=phase, total=4)
        assert desired_for(rollout, state, obs) == Desired(canary_replicas=0)


# ------------------------------------------------------------------ restarts


def test_a_restart_resumes_identically_from_the_persisted_state() -> None:
    """Serialising the state before every tick (a daemon restart each time) changes nothing."""
    scenario: list[Verdict] = ["pass", "inconclusive", "pass", "fail", "pass"]
    straight = started(analysis={"failureLimit": 1})
    straight.verdicts = sequence(*scenario)
    restarted = started(analysis={"failureLimit": 1})
    restarted.verdicts = sequence(*scenario)
    for _ in range(60):
        restarted.state = loads(dumps(restarted.state))
        a, b = straight.tick(), restarted.tick()
        assert a.decision == b.decision
        assert a.obs == b.obs
    assert straight.state.phase == "succeeded"


def test_a_restart_mid_step_continues() -> None:
    driver = analysing(started(), step=1)
    driver.run(2)
    state = driver.state
    resumed = loads(dumps(state))
    assert resumed == state
    obs = driver.cluster.observe()
    now = driver.now
    verdict = interval_verdict("pass", now)
    assert decide(driver.rollout, state, obs, now, verdict) == decide(
        driver.rollout, resumed, obs, now, verdict
    )


# ------------------------------------------------------------------ a release that cannot start


def test_a_stable_with_no_replicas_blocks_the_release() -> None:
    driver = Driver(make_rollout(), FakeCluster.create(total=0))
    driver.cluster.release(V2)
    record = driver.tick()
    state = record.decision.state
    assert state.phase == "blocked"
    assert state.revision == driver.cluster.canary_revision
    assert state.total == 0
    (paused,) = record.decision.transitions
    assert (paused.reason, paused.kind, paused.warning) == ("Paused", "paused", True)
    assert "cannot start: the stable Deployment web has 0 replicas" in paused.message
    assert "scale it up, then resume" in paused.message
    assert record.decision.desired == Desired()
    for later in driver.run(5):
        assert later.decision.transitions == ()
        assert later.decision.state.phase == "blocked"
    driver.cluster.stable.set_replicas(3)
    driver.cluster.settle()
    resumed = driver.tick("resume")
    assert reasons_of(resumed) == ["ReleaseDetected"]
    assert "resumed: canary 2.0" in resumed.decision.transitions[0].message
    assert resumed.decision.state.total == 3
    driver.run_until(phase_is("succeeded"))


def test_resume_while_the_stable_still_has_no_replicas_stays_blocked() -> None:
    driver = Driver(make_rollout(), FakeCluster.create(total=0))
    driver.cluster.release(V2)
    driver.tick()
    record = driver.tick("resume")
    assert record.decision.state.phase == "blocked"
    # Told again: the resume did not start it, and why.
    assert reasons_of(record) == ["Paused"]
    assert record.decision.consume_command


def test_a_release_whose_version_equals_the_stables_is_blocked_not_judged() -> None:
    # An env-only change under the same image tag: every query by version would
    # measure both sides at once, so there is nothing to judge.
    driver = _blocked_by_its_version()
    state = driver.state
    assert state.phase == "blocked"
    assert (state.canary_version, state.stable_version) == ("1.0", "1.0")
    (paused,) = driver.history[-1].decision.transitions
    assert (paused.reason, paused.kind) == ("Paused", "paused")
    assert "both run version '1.0'" in paused.message
    assert "distinct 'version' label" in paused.message
    assert driver.history[-1].decision.desired == Desired()
    # A distinct version label (a new revision) starts the release without a resume.
    driver.cluster.release("registry.local/shop/web:1.0", env={"FEATURE": "on"}, version="1.0-f")
    started = driver.tick()
    assert reasons_of(started) == ["ReleaseDetected"]
    assert started.decision.state.total == 4
    driver.run_until(phase_is("succeeded"))
    assert driver.cluster.stable.replicas == 4


def _blocked_by_its_version() -> Driver:
    """An env-only change under the same version: blocked before the release started."""
    driver = Driver(make_rollout(), FakeCluster.create())
    driver.cluster.release("registry.local/shop/web:1.0", env={"FEATURE": "on"})
    assert driver.tick().decision.state.phase == "blocked"
    return driver


def test_a_blocked_release_reads_back() -> None:
    state = _blocked_by_its_version().state
    assert loads(dumps(state)) == state


def test_a_pause_written_before_the_blocked_phase_reads_back_as_blocked() -> None:
    # Earlier daemons wrote a release that could not start as paused with total 0,
    # and refused it on read: the rollout did nothing until its state was deleted.
    blocked = _blocked_by_its_version().state
    written = json.loads(dumps(blocked))
    written["phase"] = "paused"
    assert loads(json.dumps(written)) == blocked


def test_abort_of_a_blocked_release_leaves_the_stable_alone() -> None:
    driver = _blocked_by_its_version()
    revision = driver.cluster.canary_revision
    record = driver.tick("abort")
    assert record.decision.desired.stable_replicas is None
    assert record.decision.desired.stable_template is None
    (ended,) = record.decision.transitions
    assert (ended.reason, ended.kind) == ("RolledBack", "rolledBack")
    assert "before the release started; the stable was not touched" in ended.message
    assert record.decision.state.phase == "rolledBack"
    assert record.decision.state.rolled_back_revision == revision
    for _ in driver.run(5):
        assert driver.cluster.stable.replicas == 4
        assert driver.cluster.canary.replicas == 0
    # Like any rolled-back revision, it starts again only on retry (and is blocked again).
    assert reasons_of(driver.tick("retry")) == ["Paused"]
    assert driver.state.phase == "blocked"


def test_promote_of_a_blocked_release_ships_it_unjudged() -> None:
    # Promotion asks for no metrics, so one version on both sides does not stop it.
    driver = _blocked_by_its_version()
    record = driver.tick("promote")
    assert reasons_of(record) == ["ReleaseDetected", "Promoting"]
    assert record.decision.state.total == 4
    driver.run_until(phase_is("succeeded"))
    assert driver.cluster.stable_revision == driver.cluster.canary_revision
    assert driver.cluster.stable.replicas == 4
    assert driver.cluster.canary.replicas == 0


def test_promote_of_a_release_blocked_by_an_empty_stable_is_refused() -> None:
    driver = Driver(make_rollout(), FakeCluster.create(total=0))
    driver.cluster.release(V2)
    driver.tick()
    record = driver.tick("promote")
    assert reasons_of(record) == ["Paused", "CommandIgnored"]
    assert record.decision.state.phase == "blocked"
    assert record.decision.desired == Desired()


def test_a_promote_that_detects_a_blocked_release_applies_to_it() -> None:
    driver = Driver(make_rollout(), FakeCluster.create())
    driver.cluster.release("registry.local/shop/web:1.0", env={"FEATURE": "on"})
    record = driver.tick("abort")
    assert reasons_of(record) == ["Paused", "RolledBack"]
    assert record.decision.desired.stable_replicas is None
    assert record.decision.state.phase == "rolledBack"


def test_a_blocked_release_whose_canary_is_reverted_goes_idle() -> None:
    driver = _blocked_by_its_version()
    driver.cluster.canary.set_template(pod_template("registry.local/shop/web:1.0", track="canary"))
    record = driver.tick()
    assert record.decision.state.phase == "idle"
    assert record.decision.desired == Desired()
    assert record.decision.transitions == ()


def test_other_commands_on_a_blocked_release_are_ignored_with_a_reason() -> None:
    driver = _blocked_by_its_version()
    for command in ("pause", "retry"):
        record = driver.tick(command)
        assert record.decision.state.phase == "blocked"
        (ignored,) = record.decision.transitions
        assert ignored.reason == "CommandIgnored"
        assert "fix what blocks it, then resume" in ignored.message


def test_a_release_superseded_by_one_that_cannot_start_is_rolled_back_first() -> None:
    # The superseded release's steps scaled the stable down: only a release under way
    # brings it back, so it ends (rolled back) before the new revision is blocked.
    driver = started()
    driver.run_until(lambda s: s.step == 1 and s.stage == "analysing")
    assert driver.cluster.stable.replicas < 4
    driver.cluster.release("registry.local/shop/web:1.0", env={"FEATURE": "on"})
    record = driver.tick()
    (rolled,) = record.decision.transitions
    assert rolled.reason == "RolledBack"
    assert "cannot start" in rolled.message
    assert "both run version '1.0'" in rolled.message
    assert record.decision.desired.stable_replicas == 4
    blocked = driver.run_until(phase_is("blocked"))
    assert reasons_of(blocked) == ["Paused"]
    assert driver.cluster.stable.replicas == 4
    assert driver.cluster.stable_revision != driver.cluster.canary_revision


def test_a_step_whose_first_judge_poll_failed_takes_its_baseline_at_the_next() -> None:
    rollout = make_rollout(analysis={"sequential": {}, "checks": []})
    at = T0 + timedelta(seconds=30)
    unread = interval_verdict("inconclusive", at, "sequential judge: counters unavailable")
    decision = decide(rollout, analysing_state(), observation(), at, unread)
    assert decision.state.verdicts[-1].verdict == "inconclusive"
    # Still "before the step's first poll": the next poll reads the post-warm-up baseline
    # instead of counting the warm-up as evidence.
    assert decision.state.last_analysis_at is None
    assert decision.state.judge is None


def test_a_step_written_but_never_scaled_starts_its_deadline_when_scaled() -> None:
    # The daemon wrote the release's first step and died before scaling the canary;
    # the next one comes back after the deadline: the canary was never late.
    driver = started()
    first = driver.tick()
    assert first.decision.state.stage == "waitingReady"
    obs = driver.cluster.observe()
    nothing = dataclasses.replace(
        obs.canary, replicas=0, ready=0, available=0, updated=0, current=0
    )
    unscaled = dataclasses.replace(obs, canary=nothing)
    later = T0 + timedelta(minutes=10)
    decision = decide(driver.rollout, first.decision.state, unscaled, later)
    assert decision.state.phase == "progressing"
    assert decision.state.step_started_at == later
    assert decision.desired.canary_replicas == 1
    assert decision.transitions == ()


def test_a_landed_promotion_superseded_by_a_revision_that_cannot_start_is_kept() -> None:
    # The stable already runs the promoted template: rolling it back would undo a
    # promotion that happened; the new revision is blocked beside it instead.
    driver, _, _ = reach("promoting")
    assert driver.cluster.stable_revision == driver.state.revision
    driver.cluster.release(V2, env={"FEATURE": "on"})
    record = driver.tick()
    assert record.decision.state.phase == "blocked"
    assert reasons_of(record) == ["Paused"]
    assert record.decision.desired.stable_template is None
    assert driver.cluster.stable.template["spec"]["containers"][0]["image"] == V2


def test_a_blocked_release_replaced_by_a_rolled_back_revision_waits_for_retry() -> None:
    driver = started()
    rolled_back = driver.cluster.canary.template
    driver.tick("abort")
    driver.run_until(phase_is("rolledBack"))
    driver.cluster.release("registry.local/shop/web:1.0", env={"FEATURE": "on"})
    assert driver.tick().decision.state.phase == "blocked"
    driver.cluster.canary.set_template(rolled_back)
    record = driver.tick()
    assert record.decision.state.phase == "idle"
    assert record.decision.transitions == ()
    assert not record.decision.state.message.startswith("blocked")
    assert reasons_of(driver.tick("retry")) == ["ReleaseDetected"]
