"""When each rollout ticks: a fixed phase per rollout, spread over its interval.

Every rollout's job fired at the same instant used to make one burst of
thousands of ticks per interval and an idle daemon in between. Each rollout
instead ticks at ``phase + k * interval`` (seconds since the epoch), its phase
hashed from its name: the same after a restart, on any replica, and uniform
over the interval across many rollouts. The first tick after start-up is
spread too, over ``STARTUP_SPREAD_PER_ROLLOUT`` per rollout (at most one
interval), so a daemon with one rollout starts at once and one with ten
thousand does not read them all in the same second.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from apscheduler.triggers.base import BaseTrigger

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
#: How much the first ticks after start-up are spread per configured rollout.
STARTUP_SPREAD_PER_ROLLOUT = timedelta(milliseconds=5)


def fraction(name: str) -> float:
    """A stable number in [0, 1) for a rollout name (the same in every process)."""
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def phase(name: str, interval: timedelta) -> float:
    """The rollout's offset into its interval, in seconds: it ticks at phase + k * interval."""
    return fraction(name) * interval.total_seconds()


def next_tick(name: str, interval: timedelta, after: datetime) -> datetime:
    """The first of the rollout's phase times strictly after ``after``.

    In whole microseconds, as datetimes are: with floats, a phase time less than a
    microsecond after ``after`` would round to ``after`` itself, and APScheduler,
    asking again from there, would ask forever.
    """
    step = interval // _MICROSECOND
    offset = int(fraction(name) * step)
    since = (after - _EPOCH) // _MICROSECOND
    k = (since - offset) // step + 1
    return _EPOCH + (offset + k * step) * _MICROSECOND


def first_tick(name: str, interval: timedelta, rollouts: int, now: datetime) -> datetime:
    """When the rollout ticks first after start-up: within the spread for ``rollouts``."""
    spread = min(interval, STARTUP_SPREAD_PER_ROLLOUT * rollouts)
    return now + spread * fraction(name)


class PhasedTrigger(BaseTrigger):  # type: ignore[misc]  # APScheduler 3 is untyped
    """An APScheduler trigger firing at the rollout's phase times (see the module docstring).

    A run moved earlier (a requeue, a watch event) does not move the phase:
    the next run after it is the next phase time.
    """

    def __init__(self, name: str, interval: timedelta) -> None:
        """Fire every ``interval`` at the phase hashed from ``name``."""
        self.name = name
        self.interval = interval

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        """The next phase time after the previous run (or from ``now`` on, before the first)."""
        if previous_fire_time is None:
            return next_tick(self.name, self.interval, now - timedelta(microseconds=1))
        return next_tick(self.name, self.interval, previous_fire_time)

    def __str__(self) -> str:
        offset = phase(self.name, self.interval)
        return f"every {self.interval.total_seconds():g}s at phase {offset:.3f}s"
