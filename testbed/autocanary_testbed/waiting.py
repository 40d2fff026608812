"""Waiting for a condition with a deadline: the one polling loop of the test bed."""

from __future__ import annotations

import time
from collections.abc import Callable

from autocanary_testbed.errors import HarnessError

_POLL_FIRST_S = 0.05
_POLL_MAX_S = 0.5


class WaitTimeout(HarnessError):
    """A condition did not become true before its deadline."""


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Poll ``condition`` (quickly at first, then every 0.5 s) until it returns True.

    Exceptions from ``condition`` propagate. Raises WaitTimeout naming ``what``
    when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    pause = _POLL_FIRST_S
    while not condition():
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"not {what} after {timeout:g}s")
        time.sleep(pause)
        pause = min(pause * 2, _POLL_MAX_S)
