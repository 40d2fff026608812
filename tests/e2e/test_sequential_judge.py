"""The sequential judge in the daemon, on real traffic: harm proven fast, safety proven too.

Decision times are printed (run with ``-s``) and kept in the test's output.
"""

from __future__ import annotations

import time

import pytest
from e2e_helpers import StackFactory, told_reasons

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

_ONE_STEP = ({"canary": "50%", "hold": "0s"},)


def _sequential_only(**judge: object) -> dict[str, object]:
    return {
        "warmup": "1s",
        "minRequests": 10,
        "inconclusiveLimit": 5,
        "inconclusivePolicy": "pause",
        "sequential": {"alpha": 0.05, "beta": 0.05, "maxDuration": "5m", **judge},
    }


def test_five_percent_errors_against_one_percent_is_rolled_back(
    stack_factory: StackFactory,
) -> None:
    stack = stack_factory(
        stable_env={"FAULT_ERROR_RATE": "0.01"},
        probe_rate="60/s",
        steps=_ONE_STEP,
        analysis=_sequential_only(),
    )
    stack.release("v2", env={"FAULT_ERROR_RATE": "0.05"})
    ready = stack.wait_for(lambda s: s.stage == "analysing", 60, "the canary Ready")
    started = time.monotonic()

    final = stack.wait_for(
        lambda s: s.phase in ("rolledBack", "succeeded", "paused"), 240, "a decision"
    )

    took = time.monotonic() - started
    print(f"\nsequential rollback of 1% -> 5% errors: {took:.0f}s after the canary was Ready")
    assert final.phase == "rolledBack", final.message
    assert "sequential judge" in final.message
    assert "errors" in final.message
    assert ready.judge is None or ready.judge.polls == 0
    assert final.judge is not None
    assert final.judge.polls >= 1
    alert = stack.receiver.wait_for(lambda b: b.get("kind") == "rolledBack", 60, "/oncall")
    errors = next(c for c in alert["checks"] if c["name"] == "sequential:errors")
    assert errors["verdict"] == "fail"
    assert errors["value"] > 1.0, "the alert says by how much the canary is worse"
    assert "CS" in errors["threshold"]


def test_identical_canary_is_promoted_once_safety_is_proven(stack_factory: StackFactory) -> None:
    # Evidence needs error events on both sides: a 10% baseline error rate makes them frequent.
    stack = stack_factory(
        stable_env={"FAULT_ERROR_RATE": "0.1"},
        probe_rate="80/s",
        steps=_ONE_STEP,
        analysis=_sequential_only(),
    )
    stack.release("v2")
    stack.wait_for(lambda s: s.stage == "analysing", 60, "the canary Ready")
    started = time.monotonic()

    final = stack.wait_for(
        lambda s: s.phase in ("rolledBack", "succeeded", "paused"), 300, "a decision"
    )

    took = time.monotonic() - started
    print(f"\nsequential promotion of an identical canary: {took:.0f}s after the canary was Ready")
    assert final.phase == "succeeded", final.message
    assert final.judge is not None
    assert all(m.safe for m in final.judge.metrics)
    assert "Promoted" in told_reasons(stack)
