"""How a rollout's failed tick is retried: the error's class decides.

A :class:`~autocanary.errors.TransientError` (the network, a 5xx, a timeout, a
conflict) may pass on its own: the rollout simply ticks again at its next
interval. A :class:`~autocanary.errors.PermanentError` (RBAC denies a call, a
configured Deployment does not exist, the API server rejects a request) repeats
until someone acts: retrying it every interval only floods the API server and
the logs, so it is retried with exponential backoff, and said once as a metric
and an Event. Errors of neither class (a corrupt state annotation, which has its
own Event and alert) keep the interval.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum

from autocanary.errors import PermanentError, TransientError

#: The first retry after a permanent error; each one in a row doubles it, up to the cap.
FIRST_BACKOFF = timedelta(seconds=30)
MAX_BACKOFF = timedelta(minutes=10)


class ErrorKind(StrEnum):
    """How a failed tick is reacted to (the ``kind`` label of ``autocanary_rollout_error``)."""

    PERMANENT = "permanent"
    TRANSIENT = "transient"


def kind_of(error: BaseException) -> ErrorKind | None:
    """The error's kind by its class; ``None`` for errors that are neither (the interval stays)."""
    if isinstance(error, PermanentError):
        return ErrorKind.PERMANENT
    if isinstance(error, TransientError):
        return ErrorKind.TRANSIENT
    return None


def backoff(failures: int, interval: timedelta) -> timedelta:
    """The wait before retrying after the ``failures``-th permanent error in a row (from 1).

    Doubles from :data:`FIRST_BACKOFF` up to :data:`MAX_BACKOFF`, and is never
    shorter than the rollout's own interval (a retry is never sooner than a tick).
    """
    if failures < 1:
        raise ValueError(f"failures counts from 1, got {failures}")
    doubled = FIRST_BACKOFF * (1 << min(failures - 1, 16))  # 2**16: far past the cap already
    return max(min(doubled, MAX_BACKOFF), interval)
