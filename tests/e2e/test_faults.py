"""Nothing lost under faults: what people are told, the capacity kept, every minute judged.

Each scenario breaks something at the worst moment on the whole test bed and
checks what users see: Events, webhook and Alertmanager alerts (at least once,
one ``id`` per transition), replicas and the outcome.

The daemon's crash at the instant a transition is written uses its test-only
hook ``AUTOCANARY_TEST_KILL_AFTER_WRITE`` (see ``autocanary.daemon.engine``): it
SIGKILLs itself right after the guarded state write that records the
transition, before acting on it or telling anyone.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from e2e_helpers import StackFactory, our_reasons, told_reasons
from kubernetes import client

from autocanary.adapters.kubernetes import event_name
from autocanary.daemon.engine import KILL_AFTER_WRITE_ENV
from autocanary_testbed.faultproxy import TrickleProxy
from autocanary_testbed.stack import CanaryStack
from autocanary_testbed.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

BAD = {"FAULT_ERROR_RATE": "0.5", "FAULT_SEED": "7"}
#: Judged on errors only: these scenarios are about what people are told, and a
#: latency threshold on a loaded two-core machine would decide some of them instead.
ERRORS_ONLY = {
    "warmup": "1s",
    "minRequests": 10,
    "failureLimit": 0,
    "inconclusiveLimit": 5,
    "inconclusivePolicy": "rollback",
    "checks": [{"name": "error-rate", "template": "error-rate", "max": "2%"}],
}


def alerts_with(stack: CanaryStack, reason: str) -> list[dict[str, Any]]:
    """Webhook alerts received for ``reason``."""
    return [b for b in stack.receiver.bodies("/oncall") if b.get("reason") == reason]


def stable_events(stack: CanaryStack) -> list[dict[str, Any]]:
    """autocanary's Events on the stable Deployment, oldest first."""
    response: Any = stack.core.list_namespaced_event(
        stack.namespace,
        field_selector=f"involvedObject.name={stack.stable_name}",
        _preload_content=False,
        _request_timeout=(5, 10),
    )
    items: list[dict[str, Any]] = json.loads(response.data)["items"]
    ours = [e for e in items if (e.get("source") or {}).get("component") == "autocanary"]
    return sorted(ours, key=lambda e: int(e["metadata"]["resourceVersion"]))


def alertmanager_names(stack: CanaryStack) -> list[str]:
    """alertname of every alert Alertmanager holds."""
    return [a["labels"]["alertname"] for a in stack.alertmanager_alerts()]


def daemon_metric(stack: CanaryStack, name: str, metric: str) -> float:
    """The sum of a metric's samples on a running daemon's /metrics."""
    port = stack.daemon_ports[name]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.split("{", 1)[0].split(" ", 1)[0] == metric
    )


# ---- a crash at the instant each transition is written ---------------------------------------


@pytest.mark.parametrize("reason", ["ReleaseDetected", "StepAdvanced", "Promoted", "RolledBack"])
def test_a_daemon_killed_right_after_writing_a_transition_still_announces_it(
    stack_factory: StackFactory, reason: str
) -> None:
    stack = stack_factory(daemon=False, analysis=ERRORS_ONLY)
    killed = stack.start_daemon("daemon-a", env={KILL_AFTER_WRITE_ENV: reason})
    bad = reason == "RolledBack"
    stack.release("v2", env=BAD if bad else None)

    wait_until(
        lambda: killed.returncode is not None,
        timeout=180,
        what=f"daemon-a killing itself right after writing {reason}",
    )
    written = stack.state()
    (notice,) = [n for n in written.pending if n.reason == reason]
    # The worst instant: the transition is in the cluster, and nobody has been told.
    assert notice.event
    assert reason not in our_reasons(stack)
    assert not alerts_with(stack, reason)
    stack.stop_daemon("daemon-a")

    stack.start_daemon("daemon-b")
    stack.wait_settled()
    # Settled may be what was written before the kill (Promoted): wait until all is told.
    final = stack.wait_for(lambda s: not s.pending, 60, "every pending transition told")

    assert final.phase == ("rolledBack" if bad else "succeeded"), final.message
    assert stack.replicas() == (3, 0)
    reasons = told_reasons(stack)
    names = [e["metadata"]["name"] for e in stack.events()]
    assert event_name(stack.canary_name, notice.id) in names  # the very transition, told
    assert reasons.count("ReleaseDetected") == 1
    if bad:
        assert reasons.count("RolledBack") == 1
        assert "Promoted" not in reasons
    else:
        assert reasons.count("StepAdvanced") == 2
        assert reasons.count("Promoted") == 1
    # Alerts: at least once, and every repeat carries the same id.
    stack.receiver.wait_for(lambda b: b.get("id") == notice.id, 60, "/oncall")

    def one_id_per_event() -> bool:
        return all(
            len({a["id"] for a in alerts_with(stack, told)}) == reasons.count(told)
            for told in ("ReleaseDetected", "StepAdvanced", "Promoted", "RolledBack")
        )

    wait_until(one_id_per_event, timeout=30, what="one alert id per transition's Event")
    if reason in ("Promoted", "RolledBack"):
        wait_until(
            lambda: f"Autocanary{reason}" in alertmanager_names(stack),
            timeout=30,
            what=f"Alertmanager holding Autocanary{reason}",
        )
        assert alertmanager_names(stack).count(f"Autocanary{reason}") == 1
        counter = "autocanary_rollbacks_total" if bad else "autocanary_promotions_total"
        assert daemon_metric(stack, "daemon-b", counter) == 1.0


# ---- the canary Deployment deleted mid-release -----------------------------------------------


def _delete_canary(stack: CanaryStack) -> float:
    client.AppsV1Api(stack.api).delete_namespaced_deployment(
        stack.canary_name, stack.namespace, _request_timeout=(5, 10)
    )
    return time.monotonic()


@pytest.mark.parametrize(("step", "canary_pods"), [(1, 2), (2, 3)], ids=["step 2", "last step"])
def test_a_canary_deleted_mid_release_never_costs_capacity(
    stack_factory: StackFactory, step: int, canary_pods: int
) -> None:
    stack = stack_factory(
        analysis=ERRORS_ONLY,
        steps=(
            {"canary": 1, "hold": "6s"},
            {"canary": "50%", "hold": "60s"},
            {"canary": "100%", "hold": "60s"},
        ),
    )
    stack.release("v2")
    # The last step is reached after a 60 s hold; four beds on two cores add minutes.
    stack.wait_for(
        lambda s: s.phase == "progressing" and s.step == step and s.stage == "analysing",
        240,
        f"analysing step {step + 1}",
    )
    template = stack.deployment(stack.canary_name)["spec"]["template"]
    assert stack.replicas() == (3 - canary_pods, canary_pods)

    deleted_at = _delete_canary(stack)
    wait_until(
        lambda: int(stack.deployment(stack.stable_name)["spec"]["replicas"]) == 3,
        timeout=60,
        what="the stable back at its 3 replicas",
    )
    restored_s = time.monotonic() - deleted_at
    print(f"step {step + 1}: stable restored to 3/3 {restored_s:.1f}s after the canary's deletion")

    # The Event is recorded right after the write that restores the stable.
    wait_until(
        lambda: any(e["reason"] == "CanaryDeleted" for e in stable_events(stack)),
        timeout=60,
        what="the CanaryDeleted Event on the stable",
    )
    (event,) = [e for e in stable_events(stack) if e["reason"] == "CanaryDeleted"]
    assert event["type"] == "Warning"
    assert (
        f"{stack.canary_name} was deleted during the progressing release of v2"
        in (event["message"])
    )
    alert = stack.receiver.wait_for(lambda b: b.get("reason") == "CanaryDeleted", 60, "/oncall")
    assert alert["kind"] == "rolledBack"
    assert alert["severity"] == "critical"
    wait_until(
        lambda: "AutocanaryCanaryDeleted" in alertmanager_names(stack),
        timeout=60,
        what="Alertmanager holding AutocanaryCanaryDeleted",
    )
    stack.sleep(6)  # more ticks while it stays gone: nothing shrinks, nothing repeats
    assert int(stack.deployment(stack.stable_name)["spec"]["replicas"]) == 3
    assert [e["reason"] for e in stable_events(stack)].count("CanaryDeleted") == 1
    assert len(alerts_with(stack, "CanaryDeleted")) == 1

    # GitOps recreates the canary: the release starts over from the whole service.
    body: Any = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": stack.canary_name, "labels": {"app": stack.settings.app}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": stack.settings.app, "track": "canary"}},
            "template": template,
        },
    }
    client.AppsV1Api(stack.api).create_namespaced_deployment(
        stack.namespace, body, _request_timeout=(5, 10)
    )
    # Meanwhile the missing canary is a permanent error, retried with backoff (30s, then
    # 60s): the new one is found at the next retry, not the next interval.
    again = stack.wait_for(lambda s: s.phase == "progressing", 150, "the release started again")
    assert again.total == 3
    stack.wait_for(lambda s: s.stage == "analysing", 60, "step 1 analysing again")
    assert stack.replicas() == (2, 1)


# ---- minutes nobody looked at ----------------------------------------------------------------


def _canary_pod_started(stack: CanaryStack) -> datetime:
    pods = stack.core.list_namespaced_pod(
        stack.namespace, label_selector="track=canary", _request_timeout=(5, 10)
    ).items
    starts = [p.status.start_time for p in pods if p.status and p.status.start_time]
    assert len(starts) == 1, f"expected one canary pod, found {len(starts)}"
    started: datetime = starts[0]
    return started


def test_a_canary_failing_only_while_the_daemon_is_down_is_rolled_back_after_restart(
    stack_factory: StackFactory,
) -> None:
    # The first analysis of a step waits for a whole window (20s at the bed's 5s scrape).
    onset, length = 45, 25
    stack = stack_factory(
        analysis=ERRORS_ONLY,
        steps=({"canary": 1, "hold": "120s"}, {"canary": "100%", "hold": "4s"}),
    )
    stack.release(
        "v2",
        env={
            "FAULT_ERROR_RATE": "0.6",
            "FAULT_AFTER": f"{onset}s",
            "FAULT_FOR": f"{length}s",
            "FAULT_SEED": "5",
        },
    )
    before = stack.wait_for(
        lambda s: s.phase == "progressing" and any(v.verdict == "pass" for v in s.verdicts),
        90,
        "a first passing interval",
    )
    started = _canary_pod_started(stack)
    stack.stop_daemon("daemon-a", kill=True)
    killed_at = datetime.now(UTC)
    if killed_at >= started + timedelta(seconds=onset):
        pytest.fail(
            f"the daemon was killed {(killed_at - started).total_seconds():.0f}s after the "
            f"canary pod started, after its faults began ({onset}s): the scenario needs a "
            "faster first analysis on this machine"
        )
    assert all(v.verdict != "fail" for v in before.verdicts)

    # The canary fails, then heals, while nobody watches.
    healed = started + timedelta(seconds=onset + length + 8)
    stack.sleep(max(0.0, (healed - datetime.now(UTC)).total_seconds()))
    stack.start_daemon("daemon-b")
    final = stack.wait_settled(timeout=120)

    assert final.phase == "rolledBack", final.message
    failed = [v for v in final.verdicts if v.verdict == "fail"]
    assert failed, final.verdicts
    assert "error-rate" in failed[0].reason
    assert stack.replicas() == (3, 0)
    assert told_reasons(stack).count("RolledBack") == 1


# ---- a Prometheus that trickles its answers --------------------------------------------------


def _hung(reason: str) -> bool:
    """Whether an interval's reason says its queries ran out of (wall-clock) time."""
    return "timed out: no complete answer" in reason or "is slow to answer" in reason


def test_abort_is_applied_while_prometheus_trickles_its_answers(
    stack_factory: StackFactory,
) -> None:
    # Inconclusive intervals never end this release: only the abort does.
    patient = {**ERRORS_ONLY, "inconclusiveLimit": 1000, "inconclusivePolicy": "pause"}
    stack = stack_factory(
        daemon=False,
        analysis=patient,
        steps=({"canary": 1, "hold": "300s"}, {"canary": "100%", "hold": "4s"}),
    )
    with TrickleProxy(stack.prometheus.url, byte_delay=0.5) as proxy:
        config = stack.config()
        config["prometheus"] = {**config["prometheus"], "url": proxy.url}
        stack.start_daemon("daemon-a", config=config)
        stack.release("v2")
        stack.wait_for(
            lambda s: s.phase == "progressing" and bool(s.verdicts), 90, "a first verdict"
        )
        proxy.trickle = True
        wait_until(
            lambda: proxy.trickles_started >= 1,
            timeout=30,
            what="a query answered a byte at a time",
        )
        stack.wait_for(
            lambda s: bool(s.verdicts) and _hung(s.verdicts[-1].reason),
            60,
            "an interval judged inconclusive on the hung Prometheus",
        )
        port = stack.daemon_ports["daemon-a"]
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200

        asked = time.monotonic()
        stack.cli(
            "abort",
            stack.settings.app,
            "--config",
            str(stack.config_path),
            "--kubeconfig",
            str(stack.cp.kubeconfig_path),
        )
        final = stack.wait_for(lambda s: s.phase == "rolledBack", 60, "rolled back by abort")
        took = time.monotonic() - asked
        still_trickling = proxy.trickles_finished == 0

    print(f"abort applied {took:.1f}s after it was asked, with Prometheus trickling")
    # Not one trickled answer ever completed (each would take minutes): the abort
    # was applied while Prometheus hung, not after it let go.
    assert still_trickling
    assert "aborted by command" in final.message
    assert stack.replicas() == (3, 0)
    hung = [v for v in final.verdicts if _hung(v.reason)]
    assert hung
    # A reason a person can read: the checks named once, no URL-encoded queries.
    assert all("%28" not in v.reason and len(v.reason) < 600 for v in hung), hung[-1].reason
