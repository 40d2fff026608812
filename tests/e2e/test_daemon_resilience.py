"""The daemon survives what production does to it: SIGKILL mid-step, a second replica, and
an upgrade from a daemon that kept the state in an annotation, killed mid-move."""

from __future__ import annotations

import time
from typing import Any

import pytest
from e2e_helpers import StackFactory, told_reasons
from kubernetes import client

from autocanary.daemon.engine import KILL_AFTER_WRITE_ENV, MIGRATED
from autocanary.rollout.state import STATE_ANNOTATION, loads, state_object_name
from autocanary_testbed.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

_SLOW_STEPS = (
    {"canary": 1, "hold": "10s"},
    {"canary": "50%", "hold": "10s"},
    {"canary": "100%", "hold": "4s"},
)


def test_daemon_killed_mid_step_resumes_without_repeating_or_skipping(
    stack_factory: StackFactory,
) -> None:
    stack = stack_factory(steps=_SLOW_STEPS)
    stack.release("v2")
    before = stack.wait_for(
        lambda s: s.phase == "progressing" and s.step == 1 and s.stage == "analysing",
        90,
        "analysing step 2",
    )
    stack.stop_daemon("daemon-a", kill=True)
    time.sleep(3)
    assert stack.state().step == before.step, "nothing acts while the daemon is down"

    # A new process with a new identity: it must wait out the dead leader's lease.
    stack.start_daemon("daemon-b")
    final = stack.wait_for(
        lambda s: s.phase in ("succeeded", "rolledBack"), 120, "the release settled"
    )

    assert final.phase == "succeeded", final.message
    assert final.started_at == before.started_at, "the same release, resumed"
    reasons = told_reasons(stack)
    assert reasons.count("ReleaseDetected") == 1
    assert reasons.count("StepAdvanced") == 2, reasons
    assert reasons.count("Promoted") == 1
    assert stack.replicas() == (3, 0)


def test_a_release_under_an_older_daemon_is_taken_over_mid_step_even_if_the_move_is_killed(
    stack_factory: StackFactory,
) -> None:
    stack = stack_factory(steps=_SLOW_STEPS)
    stack.release("v2")
    before = stack.wait_for(
        lambda s: s.phase == "progressing" and s.step == 1 and s.stage == "analysing",
        90,
        "analysing step 2",
    )
    stack.stop_daemon("daemon-a", kill=True)
    # As a daemon before the state ConfigMap left it: the state in the canary's annotation.
    core = client.CoreV1Api(stack.api)
    name = state_object_name(stack.canary_name)
    text = core.read_namespaced_config_map(name, stack.namespace).data["state"]
    core.delete_namespaced_config_map(name, stack.namespace)
    client.AppsV1Api(stack.api).patch_namespaced_deployment(
        stack.canary_name,
        stack.namespace,
        {"metadata": {"annotations": {STATE_ANNOTATION: text}}},
    )

    # This version moves it, and dies between writing the ConfigMap and removing the annotation.
    mover = stack.start_daemon("daemon-b", env={KILL_AFTER_WRITE_ENV: MIGRATED})
    wait_until(
        lambda: mover.returncode is not None, timeout=180, what="daemon-b killed after the move"
    )
    stack.stop_daemon("daemon-b")
    annotations = stack.deployment(stack.canary_name)["metadata"]["annotations"]
    assert annotations[STATE_ANNOTATION] == text  # both there now
    # The move is the tick's own write: the state it moved may have advanced a step
    # (the hold ran out while no daemon led), never started over.
    moved = stack.state()
    assert moved == loads(core.read_namespaced_config_map(name, stack.namespace).data["state"])
    assert moved.started_at == before.started_at
    assert moved.step >= before.step

    stack.start_daemon("daemon-c")
    final = stack.wait_for(
        lambda s: s.phase in ("succeeded", "rolledBack"), 150, "the release settled"
    )

    assert final.phase == "succeeded", final.message
    assert final.started_at == before.started_at, "the same release, taken over"
    assert STATE_ANNOTATION not in stack.deployment(stack.canary_name)["metadata"]["annotations"]
    reasons = told_reasons(stack)
    assert reasons.count("ReleaseDetected") == 1
    assert reasons.count("StepAdvanced") == 2, reasons  # not started over at step 1
    assert reasons.count("Promoted") == 1
    assert "StateRecovered" not in reasons
    assert stack.replicas() == (3, 0)


def _lease_holder(stack: Any) -> str:
    lease = client.CoordinationV1Api(stack.api).read_namespaced_lease("autocanary", stack.namespace)
    return str(lease.spec.holder_identity or "")


def test_two_replicas_only_the_leader_acts_and_the_other_takes_over(
    stack_factory: StackFactory,
) -> None:
    stack = stack_factory(steps=_SLOW_STEPS)
    stack.start_daemon("daemon-b")
    wait_until(
        lambda: _lease_holder(stack) in ("daemon-a", "daemon-b"), timeout=20, what="a leader"
    )
    leader = _lease_holder(stack)
    follower = "daemon-b" if leader == "daemon-a" else "daemon-a"

    stack.release("v2")
    stack.wait_for(lambda s: s.phase == "progressing" and s.step == 1, 90, "step 2")
    follower_log = stack.daemons[follower].log_path.read_text()
    assert '"event": "tick"' not in follower_log, "the follower never ticks"
    assert '"event": "tick"' in stack.daemons[leader].log_path.read_text()

    killed_at = time.monotonic()
    stack.stop_daemon(leader, kill=True)
    wait_until(lambda: _lease_holder(stack) == follower, timeout=20, what="the follower leading")
    takeover = time.monotonic() - killed_at
    # Lease 6s, retry 1s: the follower must lead within the lease time plus a few retries
    # (it counts the lease from when it last saw the record change, on its own clock).
    assert takeover < 6 + 6, f"takeover took {takeover:.1f}s"

    final = stack.wait_for(lambda s: s.phase in ("succeeded", "rolledBack"), 120, "settled")
    assert final.phase == "succeeded", final.message
    assert told_reasons(stack).count("StepAdvanced") == 2
