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
#: On the stable Deployment: a release's essentials (see :func:`essentials`), so a
#: canary Deployment deleted (or a state annotation removed) mid-release never
#: loses the total the stable must be brought back to.
RELEASE_ANNOTATION = "autocanary.io/release"
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
#: Notices kept waiting at most; past it the oldest non-critical ones are dropped (and logged).
MAX_PENDING = 20

NoticeTarget = Literal["canary", "stable"]


@dataclass(frozen=True)
class Notice:
    """A transition still to be told: its Event and its alerts, persisted until done.

    Notices are written with the state that caused them, in the same guarded
    write, and cleared once told, so a crash at any point loses none: the
    next tick (of this process or another) tells what is still pending.
    ``id`` is unique per release and transition; it names the Event (a second
    attempt finds it exists) and travels with every alert, so receivers can
    drop repeats.
    """

    id: str
    reason: str  # the Kubernetes Event reason, e.g. RolledBack
    message: str
    kind: str | None  # the alert kind (config.AlertKind), None for an Event only
    warning: bool
    at: datetime
    revision: str
    canary_version: str
    stable_version: str
    step: int | None  # 1-based, None outside the steps
    event: bool = True  # the Event is still to be recorded
    sinks: tuple[str, ...] = ()  # sinks still to deliver to
    target: NoticeTarget = "canary"  # the Deployment the Event is about
    checks: tuple[dict[str, Any], ...] = ()

    @property
    def done(self) -> bool:
        """Nothing of it is left to tell."""
        return not self.event and not self.sinks


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
    pending: tuple[Notice, ...] = ()  # transitions still to be told (Events, alerts)
    notices: int = 0  # notices created for this rollout so far: makes each notice's id unique
    corrupt_seen: str = ""  # on the stable's record: digest of a corrupt canary state reported

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


def essentials(state: RolloutState, record: RolloutState | None) -> RolloutState:
    """What the stable's release record keeps of ``state``: enough to restore capacity.

    The release's identity, phase, total and the stable's original template;
    the record's own notices (about the stable) and corrupt-state marker are kept.
    """
    return RolloutState(
        phase=state.phase,
        revision=state.revision,
        stable_revision=state.stable_revision,
        canary_version=state.canary_version,
        stable_version=state.stable_version,
        stable_template=state.stable_template,
        total=state.total,
        started_at=state.started_at,
        finished_at=state.finished_at,
        rolled_back_revision=state.rolled_back_revision,
        pending=record.pending if record is not None else (),
        notices=record.notices if record is not None else 0,
        corrupt_seen=record.corrupt_seen if record is not None else "",
    )


_INT_FIELDS = (
    "canary_generation",
    "total",
    "step",
    "step_passes",
    "failures",
    "inconclusive",
    "notices",
)
_STR_FIELDS = (
    "revision",
    "stable_revision",
    "canary_version",
    "stable_version",
    "rolled_back_revision",
    "message",
    "corrupt_seen",
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
    if data.get("phase", "idle") not in PHASES:
        raise StateCorrupt(f"phase: unknown phase {data['phase']!r}; expected one of {PHASES}")
    if data.get("stage", "waitingReady") not in get_args(Stage):
        raise StateCorrupt(f"stage: unknown stage {data['stage']!r}")
    for name in ("verdicts", "pending"):
        if not isinstance(data.get(name, []), list):
            raise StateCorrupt(f"{name}: expected a list, got {data[name]!r}")


def _check_meaning(state: RolloutState) -> None:
    """Reject well-typed values no daemon writes, which a decision cannot act on."""
    if state.phase in ACTIVE_PHASES:
        if state.total < 1:
            raise StateCorrupt(
                f"total: a {state.phase} release needs at least 1 replica, got {state.total}"
            )
        if not state.revision:
            raise StateCorrupt(f"revision: a {state.phase} release needs its canary revision")


def _required_time(value: Any, where: str) -> datetime:
    parsed = _time(value, where)
    if parsed is None:
        raise StateCorrupt(f"{where}: expected an ISO timestamp, got None")
    return parsed


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise StateCorrupt(f"{where}: expected an object, got {value!r:.80}")
    return value


def _typed(value: Any, kind: type[Any], where: str) -> Any:
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise StateCorrupt(f"{where}: expected {kind.__name__}, got {value!r:.80}")
    return value


def _verdict(value: Any, i: int) -> VerdictRecord:
    where = f"verdicts[{i}]"
    v = _object(value, where)
    return VerdictRecord(
        at=_required_time(v.get("at"), f"{where}.at"),
        step=_typed(v.get("step"), int, f"{where}.step"),
        verdict=_typed(v.get("verdict"), str, f"{where}.verdict"),
        reason=_typed(v.get("reason", ""), str, f"{where}.reason"),
        checks=_object(v.get("checks", {}), f"{where}.checks"),
    )


def _notice(value: Any, i: int) -> Notice:
    where = f"pending[{i}]"
    n = _object(value, where)
    unknown = set(n) - {f.name for f in fields(Notice)}
    if unknown:
        raise StateCorrupt(f"{where}: unknown fields {sorted(unknown)}")
    step = n.get("step")
    target = n.get("target", "canary")
    if target not in get_args(NoticeTarget):
        raise StateCorrupt(f"{where}.target: expected canary or stable, got {target!r:.80}")
    sinks = _typed(n.get("sinks", []), list, f"{where}.sinks")
    checks = _typed(n.get("checks", []), list, f"{where}.checks")
    return Notice(
        id=_typed(n.get("id"), str, f"{where}.id"),
        reason=_typed(n.get("reason"), str, f"{where}.reason"),
        message=_typed(n.get("message", ""), str, f"{where}.message"),
        kind=None if n.get("kind") is None else _typed(n["kind"], str, f"{where}.kind"),
        warning=_typed(n.get("warning", False), bool, f"{where}.warning"),
        at=_required_time(n.get("at"), f"{where}.at"),
        revision=_typed(n.get("revision", ""), str, f"{where}.revision"),
        canary_version=_typed(n.get("canary_version", ""), str, f"{where}.canary_version"),
        stable_version=_typed(n.get("stable_version", ""), str, f"{where}.stable_version"),
        step=None if step is None else _typed(step, int, f"{where}.step"),
        event=_typed(n.get("event", True), bool, f"{where}.event"),
        sinks=tuple(_typed(x, str, f"{where}.sinks") for x in sinks),
        target=target,
        checks=tuple(_object(c, f"{where}.checks") for c in checks),
    )


def loads(text: str) -> RolloutState:
    """Parse the annotation; raise :class:`StateCorrupt` (only) saying what is wrong."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
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
    data["verdicts"] = tuple(_verdict(v, i) for i, v in enumerate(data.get("verdicts", [])))
    data["pending"] = tuple(_notice(n, i) for i, n in enumerate(data.get("pending", [])))
    state = RolloutState(**data)
    _check_meaning(state)
    return state
