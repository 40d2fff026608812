"""Manual control through the CLI during a release: abort, retry, promote."""

from __future__ import annotations

import pytest
from e2e_helpers import StackFactory, stable_container, told_reasons

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def test_abort_then_retry_then_promote(stack_factory: StackFactory) -> None:
    stack = stack_factory(steps=({"canary": 1, "hold": "60s"}, {"canary": "100%", "hold": "60s"}))
    stack.release("v2")
    stack.wait_for(lambda s: s.phase == "progressing" and s.stage == "analysing", 60, "analysing")
    common = ("--config", str(stack.config_path), "--kubeconfig", str(stack.cp.kubeconfig_path))

    out = stack.cli("abort", stack.settings.app, *common)
    assert "abort requested" in out
    aborted = stack.wait_for(lambda s: s.phase == "rolledBack", 60, "rolled back by abort")
    assert "aborted by command" in aborted.message
    assert stack.replicas() == (3, 0)
    stack.receiver.wait_for(lambda b: b.get("kind") == "rolledBack", 60, "/oncall")

    # The rolled-back revision stays rolled back until someone asks for a retry.
    stack.sleep(5)
    assert stack.state().phase == "rolledBack"
    stack.cli("retry", stack.settings.app, *common)
    stack.wait_for(lambda s: s.phase == "progressing", 60, "the retried release")

    stack.cli("promote", stack.settings.app, *common)
    final = stack.wait_for(lambda s: s.phase == "succeeded", 60, "promoted by command")
    assert stable_container(stack)["image"] == "autocanary/testpage:v2"
    assert stack.replicas() == (3, 0)
    reasons = told_reasons(stack)
    assert reasons.count("RolledBack") == 1
    assert reasons.count("ReleaseDetected") == 2
    assert "StepAdvanced" not in reasons, "promote skipped the remaining steps"
    assert final.message.startswith("promoted")
    assert "command" not in (
        stack.deployment(stack.canary_name)["metadata"].get("annotations") or {}
    ).get("autocanary.io/command", "")


def test_status_shows_the_rollout(stack_factory: StackFactory) -> None:
    stack = stack_factory()
    stack.release("v2")
    stack.wait_for(lambda s: s.phase == "progressing" and s.verdicts, 60, "a first verdict")
    common = ("--config", str(stack.config_path), "--kubeconfig", str(stack.cp.kubeconfig_path))

    table = stack.cli("status", *common)

    header, row, *details = table.splitlines()
    assert header.split()[:4] == ["ROLLOUT", "NAMESPACE", "PHASE", "STEP"]
    assert row.split()[:3] == [stack.settings.app, stack.namespace, "progressing"]
    assert "v2 vs v1" in row
    assert any("error-rate: pass" in line for line in details)


def test_a_release_that_cannot_start_is_blocked_then_aborted_without_touching_the_stable(
    stack_factory: StackFactory,
) -> None:
    stack = stack_factory()
    common = ("--config", str(stack.config_path), "--kubeconfig", str(stack.cp.kubeconfig_path))
    before = stack.replicas()
    image = stable_container(stack)["image"]

    # An env-only change under the stable's version: no query could tell the two apart.
    stack.release("v1", env={"FEATURE": "on"})
    blocked = stack.wait_for(lambda s: s.phase == "blocked", 60, "the release blocked")
    assert "both run version 'v1'" in blocked.message
    stack.receiver.wait_for(lambda b: b.get("kind") == "paused", 60, "/oncall")
    table = stack.cli("status", *common)
    assert table.splitlines()[1].split()[2:4] == ["blocked", "-"]
    assert stack.replicas() == before

    # The abort reads the blocked state back from its ConfigMap (it was once refused
    # as corrupt there) and ends it with nothing scaled for it.
    stack.cli("abort", stack.settings.app, *common)
    aborted = stack.wait_for(lambda s: s.phase == "rolledBack", 60, "rolled back by abort")
    assert "before the release started" in aborted.message
    stack.receiver.wait_for(lambda b: b.get("kind") == "rolledBack", 60, "/oncall")
    assert stack.replicas() == before
    assert stable_container(stack)["image"] == image

    # A distinct version is a new revision: it starts.
    stack.release("v2")
    stack.wait_for(lambda s: s.phase == "progressing", 60, "the v2 release")
    reasons = told_reasons(stack)
    assert "StateCorrupt" not in reasons
    assert reasons[:3] == ["Paused", "RolledBack", "ReleaseDetected"]
