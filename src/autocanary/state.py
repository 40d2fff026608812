"""A rollout's persisted state: what the daemon knows between ticks.

It lives in the cluster, as a JSON annotation on the canary Deployment, so a
restarted daemon (or the other replica) resumes every rollout where it stood.
Everything else is re-read from the cluster each tick.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from autocanary.errors import StateCorrupt

STATE_ANNOTATION = "autocanary.io/state"
COMMAND_ANNOTATION = "autocanary.io/command"
SCHEMA_VERSION = 1

Phase = Literal[
    "idle", "progressing", "paused", "promoting", "succeeded", "rollingBack", "rolledBack"
]
PHASES: tuple[Phase, ...] = get_args(Phase)
Stage = Literal["waitingReady", "analysing"]
Command = Literal["promote", "abort", "retry", "pause", "resume"]
COMMANDS: tuple[Command, ...] = ("promote", "abort", "retry", "pause", "resume")
MAX_VERDICTS = 10

#: Phases in which a release is under way (the daemon owns both Deployments' scale).
ACTIVE_PHASES: frozenset[Phase] = frozenset({"progressing", "paused", "promoting", "rollingBack"})


@dataclass(frozen=True)
class VerdictRecord:
    """A compact record of one interval's verdict, kept for ``status`` and alerts."""

    at: datetime
    step: int
    verdict: str
    reason: str
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class RolloutState:
    """Everything about a rollout's release that cannot be re-read from the cluster."""

    phase: Phase = "idle"
    revision: str = ""  # the canary revision this release is about
    stable_revision: str = ""  # the stable's revision when the release started
    canary_version: str = ""
    stable_version: str = ""
    stable_template: dict[str, Any] | None = None  # restored if a promotion must be undone
    canary_generation: int = 0  # the canary's generation holding this release's template
    total: int = 0
    step: int = 0  # 0-based index into the rollout's steps
    stage: Stage = "waitingReady"
    step_started_at: datetime | None = None
    ready_at: datetime | None = None
    not_ready_since: datetime | None = None
    not_ready_seconds: float = 0.0  # earlier spells of this step's canary not Ready, in all
    last_analysis_at: datetime | None = None
    step_passes: int = 0
    failures: int = 0
    inconclusive: int = 0  # consecutive
    started_at: datetime | None = None
    finished_at: datetime | None = None
    rolled_back_revision: str = ""
    message: str = ""
    verdicts: tuple[VerdictRecord, ...] = ()
    judge: dict[str, Any] | None = None  # the sequential judge's evidence, when enabled

    def with_verdict(self, record: VerdictRecord) -> tuple[VerdictRecord, ...]:
        """The recent verdicts with ``record`` appended, oldest dropped past the limit."""
        return (*self.verdicts, record)[-MAX_VERDICTS:]


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        # NaN and infinities are not JSON; other tools reading the annotation would choke.
        return None
    return value


def dumps(state: RolloutState) -> str:
    """Serialise a state for the annotation (compact JSON with a schema version)."""
    data = _encode(asdict(state))
    data["schema"] = SCHEMA_VERSION
    return json.dumps(data, separators=(",", ":"), sort_keys=True, allow_nan=False)


_TIME_FIELDS = {f.name for f in fields(RolloutState) if "datetime" in str(f.type)}


def _time(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise StateCorrupt(f"{where}: expected an ISO timestamp, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as e:
        raise StateCorrupt(f"{where}: expected an ISO timestamp, got {value!r}") from e
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


_INT_FIELDS = ("total", "step", "step_passes", "failures", "inconclusive")
_STR_FIELDS = (
    "revision",
    "stable_revision",
    "canary_version",
    "stable_version",
    "rolled_back_revision",
    "message",
)
_DICT_FIELDS = ("stable_template", "judge")


def _check_types(data: dict[str, Any]) -> None:
    """Reject values of the wrong type, which would otherwise fail later, deep in a decision."""
    for name in _INT_FIELDS:
        value = data.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise StateCorrupt(f"{name}: expected a non-negative integer, got {value!r}")
    for name in _STR_FIELDS:
        if not isinstance(data.get(name, ""), str):
            raise StateCorrupt(f"{name}: expected a string, got {data[name]!r}")
    for name in _DICT_FIELDS:
        if not isinstance(data.get(name), dict | None):
            raise StateCorrupt(f"{name}: expected an object or null, got {data[name]!r}")
    seconds = data.get("not_ready_seconds", 0.0)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        raise StateCorrupt(f"not_ready_seconds: expected a non-negative number, got {seconds!r}")
    if data.get("stage", "waitingReady") not in get_args(Stage):
        raise StateCorrupt(f"state annotation has unknown stage {data['stage']!r}")
    if not isinstance(data.get("verdicts", []), list):
        raise StateCorrupt(f"verdicts: expected a list, got {data['verdicts']!r}")


def _required_time(value: Any, where: str) -> datetime:
    parsed = _time(value, where)
    if parsed is None:
        raise StateCorrupt(f"{where}: expected an ISO timestamp, got None")
    return parsed


def loads(text: str) -> RolloutState:
    """Parse the annotation; raise :class:`StateCorrupt` saying what is wrong."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise StateCorrupt(f"state annotation is not JSON: {e}") from e
    if not isinstance(data, dict):
        raise StateCorrupt("state annotation is not a JSON object")
    schema = data.pop("schema", None)
    if schema != SCHEMA_VERSION:
        raise StateCorrupt(
            f"state annotation has schema {schema!r}; this daemon reads schema {SCHEMA_VERSION}"
        )
    known = {f.name for f in fields(RolloutState)}
    unknown = set(data) - known
    if unknown:
        raise StateCorrupt(f"state annotation has unknown fields {sorted(unknown)}")
    for name in _TIME_FIELDS:
        data[name] = _time(data.get(name), name)
    _check_types(data)
    try:
        data["verdicts"] = tuple(
            VerdictRecord(
                at=_required_time(v["at"], "verdicts.at"),
                step=int(v["step"]),
                verdict=str(v["verdict"]),
                reason=str(v.get("reason", "")),
                checks=dict(v.get("checks", {})),
            )
            for v in data.get("verdicts", [])
        )
        state = RolloutState(**data)
    except (KeyError, TypeError, ValueError) as e:
        raise StateCorrupt(f"state annotation is malformed: {e}") from e
    if state.phase not in PHASES:
        raise StateCorrupt(f"state annotation has unknown phase {state.phase!r}")
    return state
