"""What a backtest found, as plain frozen values, and their JSON form.

A :class:`Report` holds one :class:`Replay` per release and variant; each
replay is the timeline of what the daemon would have done (one
:class:`TimelineEntry` per tick that analysed or changed something) and its
:class:`Outcome`. ``Report.to_json()`` and ``Report.from_json()`` round-trip:
keys are camelCase like the config's, times ISO 8601 in UTC, and a value that
was NaN or infinite is written as the string ``"NaN"``/``"Infinity"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from pydantic.alias_generators import to_camel

from autocanary.analysis.verdict import Verdict
from autocanary.backtest.errors import BacktestInputError
from autocanary.rollout.state import Reason

_JSON = ConfigDict(
    alias_generator=to_camel,
    serialize_by_alias=True,
    validate_by_name=True,
    validate_by_alias=True,
    ser_json_inf_nan="strings",
)

#: What a replay ended in: the decision the daemon would have taken, or none by the window's end.
DecisionKind = Literal["promoted", "rolledBack", "paused", "undecided"]


@with_config(_JSON)
@dataclass(frozen=True)
class Release:
    """One past release to replay: a window and the two versions' label values."""

    name: str
    start: datetime  # the release starts here (``--from``)
    end: datetime  # no tick after this (``--to``)
    canary_version: str
    stable_version: str


@with_config(_JSON)
@dataclass(frozen=True)
class Variant:
    """A config variant: the rollout as configured (no overrides) or with ``--set`` overrides."""

    name: str
    overrides: tuple[str, ...] = ()  # PATH=VALUE, as given


@with_config(_JSON)
@dataclass(frozen=True)
class CheckPoint:
    """One check at one interval: its value, the bounds it had to respect, the verdict."""

    name: str
    verdict: Verdict
    value: float | None
    stable_value: float | None  # relative checks only
    threshold: str  # in words, as alerts show it: "<= 0.02"
    upper: float | None  # the value had to stay at or below this (max, or stable-relative)
    lower: float | None  # ... and at or above this
    reason: str


@with_config(_JSON)
@dataclass(frozen=True)
class Event:
    """A transition the daemon would have recorded as a Kubernetes Event."""

    reason: Reason
    message: str


@with_config(_JSON)
@dataclass(frozen=True)
class TimelineEntry:
    """One tick that analysed an interval or changed the release."""

    at: datetime
    step: int  # 1-based step the release was at when the tick began
    steps: int
    canary_pods: int
    verdict: Verdict | None  # None: this tick ran no analysis
    reason: str
    canary_requests: float | None
    checks: tuple[CheckPoint, ...]
    events: tuple[Event, ...]


@with_config(_JSON)
@dataclass(frozen=True)
class Outcome:
    """The decision the daemon would have taken, when, at which step, and why."""

    decision: DecisionKind
    at: datetime | None  # None when undecided
    step: int
    reason: str


@with_config(_JSON)
@dataclass(frozen=True)
class Replay:
    """One release replayed under one variant."""

    release: Release
    variant: Variant
    timeline: tuple[TimelineEntry, ...]
    outcome: Outcome

    def checks(self) -> tuple[str, ...]:
        """The names of the checks analysed, in config order."""
        names: dict[str, None] = {}
        for entry in self.timeline:
            names.update(dict.fromkeys(c.name for c in entry.checks))
        return tuple(names)


@with_config(_JSON)
@dataclass(frozen=True)
class Report:
    """Every release replayed under every variant, release-major."""

    rollout: str
    prometheus: str
    replicas: int  # the simulated stable's replica count (it sizes percentage steps)
    releases: tuple[Release, ...]
    variants: tuple[Variant, ...]
    replays: tuple[Replay, ...]

    def replay(self, release: str, variant: str) -> Replay:
        """The replay of ``release`` under ``variant``; ``KeyError`` naming what exists."""
        for replay in self.replays:
            if replay.release.name == release and replay.variant.name == variant:
                return replay
        raise KeyError(
            f"no replay of release {release!r} under variant {variant!r}; have "
            f"{[(r.release.name, r.variant.name) for r in self.replays]}"
        )

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON text."""
        return _ADAPTER.dump_json(self, indent=indent).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> Report:
        """Read back what :meth:`to_json` wrote; :class:`BacktestInputError` if it is not that."""
        try:
            return _ADAPTER.validate_json(text)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise BacktestInputError(
                f"not a backtest report ({e.error_count()} problem(s); first at {where or 'top'}:"
                f" {first['msg']})"
            ) from e


_ADAPTER: TypeAdapter[Report] = TypeAdapter(Report)
