"""``DeadlineRunner``: a wall-clock bound on a blocking call, and on the calls it abandons."""

from __future__ import annotations

import threading
import time

import pytest

from autocanary.adapters.deadline import DeadlineExceeded, DeadlineRunner

HANG_S = 30.0  # how long a "hung" call would block if nothing bounded it


def test_returns_the_value_and_raises_the_calls_own_errors() -> None:
    runner = DeadlineRunner("t")
    assert runner.call(lambda: 42, 5) == 42
    empty: dict[str, int] = {}
    with pytest.raises(KeyError, match="missing"):
        runner.call(lambda: empty["missing"], 5)
    assert runner.stuck == 0


def test_a_call_past_its_deadline_is_abandoned_and_counted_until_it_ends() -> None:
    runner = DeadlineRunner("t")
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=r"no complete answer within 0.1s"):
        runner.call(lambda: release.wait(HANG_S), 0.1)
    assert time.monotonic() - started < HANG_S / 2
    assert runner.stuck == 1
    release.set()
    deadline = time.monotonic() + HANG_S
    while runner.stuck and time.monotonic() < deadline:
        time.sleep(0.01)
    assert runner.stuck == 0


def test_refuses_new_calls_while_too_many_abandoned_ones_hang() -> None:
    runner = DeadlineRunner("t", max_stuck=2)
    release = threading.Event()
    for _ in range(2):
        with pytest.raises(DeadlineExceeded):
            runner.call(lambda: release.wait(HANG_S), 0.01)
    with pytest.raises(DeadlineExceeded, match="2 earlier calls are still waiting"):
        runner.call(lambda: 1, 5)
    release.set()
