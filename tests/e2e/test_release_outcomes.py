"""Release scenarios on the real control plane, with real traffic, Prometheus and the daemon."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from e2e_helpers import StackFactory, stable_container, stable_labels, told_reasons

from autocanary_testbed.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def test_good_release_is_promoted_through_every_step(stack_factory: StackFactory) -> None:
    stack = stack_factory()
    stack.release("v2")

    final = stack.wait_for(
        lambda s: s.canary_version == "v2" and s.phase in ("succeeded", "rolledBack"),
        180,
        "settled",
    )

    assert final.phase == "succeeded", final.message
    assert stable_container(stack)["image"] == "autocanary/testpage:v2"
    labels = stable_labels(stack)
    assert labels["version"] == "v2"
    assert labels["track"] == "stable", "the stable keeps its own role label"
    assert stack.replicas() == (3, 0)
    reasons = told_reasons(stack)
    assert reasons.count("StepAdvanced") == 2
    assert reasons[0] == "ReleaseDetected"
    assert reasons[-1] == "Promoted"
    assert [v for v in final.verdicts if v.verdict == "fail"] == []
    stack.receiver.wait_for(lambda b: b.get("kind") == "promoted", 60, "/oncall")
    wait_until(
        lambda: any(
            a["labels"].get("alertname") == "AutocanaryPromoted"
            for a in stack.alertmanager_alerts()
        ),
        timeout=60,
        what="the promotion in Alertmanager",
    )


def test_the_last_step_without_a_stable_is_judged_by_absolute_thresholds(
    stack_factory: StackFactory,
) -> None:
    # Steps 1, 50%, 100% with the stable scaled down: at 100% it has no pods, so the
    # comparison with it cannot be judged; before, that step stayed inconclusive and
    # this rollout (inconclusive twice: rollback) never promoted.
    compared = {
        "name": "errors-vs-stable",
        "template": "error-rate",
        "relative": {"tolerance": "50%", "margin": "1%"},
    }
    stack = stack_factory(
        analysis={
            "warmup": "1s",
            "minRequests": 10,
            "failureLimit": 0,
            "inconclusiveLimit": 2,
            "inconclusivePolicy": "rollback",
            "checks": [{"name": "error-rate", "template": "error-rate", "max": "2%"}, compared],
        }
    )
    stack.release("v2")

    final = stack.wait_for(
        lambda s: s.canary_version == "v2" and s.phase in ("succeeded", "rolledBack"),
        240,
        "settled",
    )

    assert final.phase == "succeeded", final.message
    assert stack.replicas() == (3, 0)
    judged = {(v.step, name) for v in final.verdicts for name in v.checks}
    assert (0, "errors-vs-stable") in judged, "compared while the stable had pods"
    assert (2, "error-rate") in judged
    assert (2, "errors-vs-stable") not in judged, "no comparison without a stable"


def test_error_regression_is_rolled_back_in_the_first_step(stack_factory: StackFactory) -> None:
    stack = stack_factory()
    stack.release("v2", env={"FAULT_ERROR_RATE": "0.1"})

    final = stack.wait_for(
        lambda s: s.canary_version == "v2" and s.phase in ("succeeded", "rolledBack"),
        120,
        "settled",
    )

    assert final.phase == "rolledBack", final.message
    assert final.step == 0, "rolled back during the first step"
    assert stack.replicas() == (3, 0)
    assert stable_container(stack)["image"] == "autocanary/testpage:v1", "stable template untouched"
    reasons = told_reasons(stack)
    assert "RolledBack" in reasons
    assert "StepAdvanced" not in reasons
    alert = stack.receiver.wait_for(lambda b: b.get("kind") == "rolledBack", 60, "/oncall")
    failing = [c for c in alert["checks"] if c["verdict"] == "fail"]
    assert [c["name"] for c in failing] == ["error-rate"]
    assert 0.02 < failing[0]["value"] < 0.3  # 10% errors, above the 2% threshold
    assert alert["severity"] == "critical"

    def in_alertmanager() -> bool:
        return any(
            a["labels"].get("alertname") == "AutocanaryRolledBack"
            and a["labels"].get("rollout") == stack.settings.app
            and a["labels"].get("namespace") == stack.namespace
            for a in stack.alertmanager_alerts()
        )

    wait_until(in_alertmanager, timeout=60, what="the rollback in Alertmanager")


def test_latency_regression_alone_is_rolled_back_on_latency(stack_factory: StackFactory) -> None:
    stack = stack_factory()
    stack.release("v2", env={"FAULT_LATENCY": "400ms"})

    final = stack.wait_for(
        lambda s: s.canary_version == "v2" and s.phase in ("succeeded", "rolledBack"),
        120,
        "settled",
    )

    assert final.phase == "rolledBack", final.message
    last = final.verdicts[-1]
    assert last.checks["latency-p95"]["verdict"] == "fail"
    assert last.checks["error-rate"]["verdict"] == "pass"
    assert last.checks["latency-p95"]["value"] >= 0.4
    alert = stack.receiver.wait_for(lambda b: b.get("kind") == "rolledBack", 60, "/oncall")
    assert "latency-p95" in alert["message"]


def test_canary_whose_image_cannot_be_pulled_is_rolled_back_on_the_pull_error(
    stack_factory: StackFactory,
) -> None:
    # progressDeadline 10m: only the pod's own status can end this release soon.
    stack = stack_factory(progress_deadline="10m")
    # An image the pod runner cannot run: it reports ErrImagePull, as a kubelet would.
    stack.release("v2", image="registry.example/unknown-image:v2")

    final = stack.wait_for(
        lambda s: s.canary_version == "v2" and s.phase in ("succeeded", "rolledBack"), 90, "settled"
    )

    assert final.phase == "rolledBack", final.message
    assert final.finished_at is not None
    assert final.started_at is not None
    took = final.finished_at - final.started_at
    print(f"\nunpullable image rolled back {took.total_seconds():.0f}s after the release started")
    assert took < timedelta(minutes=2), "not at the deadline"
    assert "canary pod testpage-canary-" in final.message
    assert re.search(r"container testpage (ErrImagePull|ImagePullBackOff)", final.message)
    assert "unknown-image" in final.message, "the kubelet's message, about the image"
    reasons = told_reasons(stack)
    assert "ProgressDeadlineExceeded" not in reasons
    assert reasons.index("CanaryPodFailed") < reasons.index("RolledBack")
    assert stack.replicas() == (3, 0)
    alert = stack.receiver.wait_for(lambda b: b.get("kind") == "rolledBack", 60, "/oncall")
    assert "canary pod testpage-canary-" in alert["message"]


def test_canary_whose_process_exits_at_start_is_rolled_back_on_crash_loop(
    stack_factory: StackFactory,
) -> None:
    stack = stack_factory(progress_deadline="10m")
    # testpage refuses an invalid fault setting at start (exit status 2), every time.
    stack.release("v2", env={"FAULT_LATENCY": "forever"})

    final = stack.wait_for(
        lambda s: s.canary_version == "v2" and s.phase in ("succeeded", "rolledBack"), 90, "settled"
    )

    assert final.phase == "rolledBack", final.message
    assert final.finished_at is not None
    assert final.started_at is not None
    took = final.finished_at - final.started_at
    print(f"\ncrash loop rolled back {took.total_seconds():.0f}s after the release started")
    assert took < timedelta(minutes=2), "well before progressDeadline 10m"
    assert re.search(
        r"canary pod testpage-canary-\S+: container testpage CrashLoopBackOff "
        r"\(restarted \d+ times; last exit code 2",
        final.message,
    ), final.message
    reasons = told_reasons(stack)
    assert "CanaryPodFailed" in reasons
    assert "ProgressDeadlineExceeded" not in reasons
    assert stack.replicas() == (3, 0)
    alert = stack.receiver.wait_for(lambda b: b.get("kind") == "rolledBack", 60, "/oncall")
    assert "CrashLoopBackOff" in alert["message"]


def test_canary_that_never_becomes_ready_is_rolled_back_at_the_progress_deadline(
    stack_factory: StackFactory,
) -> None:
    stack = stack_factory(progress_deadline="1m")
    # The process runs and serves, but its readiness probe (/healthz) never passes:
    # nothing the kubelet reports is fatal, so only progressDeadline can end it.
    stack.release("v2", env={"FAULT_UNREADY": "true"})

    stable_replicas: set[int] = set()
    served: set[tuple[tuple[str, int], ...]] = set()
    unready_v2: list[str] = []

    def watch(_: object) -> None:
        stable_replicas.add(stack.replicas()[0])
        served.add(tuple(sorted(stack.served_versions().items())))
        unready_v2.extend(
            p.name for p in stack.runner.pods() if p.labels.get("version") == "v2" and not p.ready
        )

    final = stack.wait_for(
        lambda s: s.canary_version == "v2" and s.phase in ("succeeded", "rolledBack"),
        180,
        "settled",
        on_poll=watch,
    )

    assert final.phase == "rolledBack", final.message
    assert final.finished_at is not None
    assert final.started_at is not None
    took = final.finished_at - final.started_at
    print(f"\nnever-Ready canary rolled back {took.total_seconds():.0f}s after the release started")
    assert took >= timedelta(minutes=1), "not before the deadline"
    assert "canary pods not Ready" in final.message
    assert "within progressDeadline 1m" in final.message
    assert unready_v2, "the canary's process ran on, never Ready"
    assert stable_replicas == {3}, f"capacity never dropped: stable replicas {stable_replicas}"
    # The Service sent traffic to the 3 stable pods throughout, never to the canary.
    assert served == {(("v1", 3),)}, served
    reasons = told_reasons(stack)
    assert "CanaryPodFailed" not in reasons
    assert "ProgressDeadlineExceeded" in reasons
    assert reasons.index("ProgressDeadlineExceeded") < reasons.index("RolledBack")
    assert stack.replicas() == (3, 0)
    alert = stack.receiver.wait_for(lambda b: b.get("kind") == "rolledBack", 60, "/oncall")
    assert "progressDeadline" in alert["message"]


def test_prometheus_down_mid_release_never_advances_and_pauses(stack_factory: StackFactory) -> None:
    analysis = {
        "warmup": "1s",
        "minRequests": 10,
        "inconclusiveLimit": 2,
        "inconclusivePolicy": "pause",
        "checks": [{"name": "error-rate", "template": "error-rate", "max": "2%"}],
    }
    stack = stack_factory(analysis=analysis)
    stack.release("v2")
    stack.wait_for(
        lambda s: s.phase == "progressing" and s.stage == "analysing", 60, "analysing step 1"
    )
    stack.stop_prometheus()

    final = stack.wait_for(lambda s: s.phase != "progressing", 90, "the inconclusive policy")

    assert final.phase == "paused", final.message
    assert final.step == 0, "never advanced on missing evidence"
    assert final.inconclusive == 3
    assert all(v.verdict == "inconclusive" for v in final.verdicts)
    reasons = told_reasons(stack)
    assert "StepAdvanced" not in reasons
    assert "Promoted" not in reasons
    assert reasons[-1] == "Paused"
    alert = stack.receiver.wait_for(lambda b: b.get("kind") == "paused", 60, "/oncall")
    assert "inconclusive" in alert["message"]
    assert stack.replicas() == (2, 1), "paused keeps the split as it was"
