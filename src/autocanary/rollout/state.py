"""A rollout's persisted state: what the daemon knows between ticks.

It lives in the cluster, as JSON in a ConfigMap of its own beside the canary
Deployment (:func:`state_object_name`, owned by the canary), so a restarted
daemon (or the other replica) resumes every rollout where it stood. Everything
else is re-read from the cluster each tick. Daemons before the ConfigMap kept
it in the :data:`STATE_ANNOTATION` annotation on the canary; that is still read
(and moved) when it is the only state there is.

The state is read back by pydantic in strict mode (a value of the wrong
JSON type is an error, never coerced), and every problem is reported with its
field path, e.g. ``pending[0].at``. The stored format is plain JSON: snake_case
fields, ISO 8601 times in UTC, the judge's evidence in its own camelCase form.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    ValidationError,
)

from autocanary.config.models import AlertKind
from autocanary.errors import StateCorrupt
from autocanary.judge.state import JudgeState, check_judge_state

#: Where daemons before the state ConfigMap kept the state: read only to migrate it.
STATE_ANNOTATION = "autocanary.io/state"
COMMAND_ANNOTATION = "autocanary.io/command"
#: On the stable Deployment: a release's essentials (see :func:`essentials`), so a
#: canary Deployment deleted (or a state annotation removed) mid-release never
#: loses the total the stable must be brought back to.
RELEASE_ANNOTATION = "autocanary.io/release"
SCHEMA_VERSION = 1
#: The key of the state ConfigMap's data that holds the state's JSON.
STATE_KEY = "state"


#: How the name of every state ConfigMap ends (see :func:`state_object_name`).
STATE_OBJECT_SUFFIX = ".autocanary-state"


def state_object_name(canary: str) -> str:
    """The name of the ConfigMap holding the state of the rollout whose canary is ``canary``.

    Named after the canary Deployment, which owns it: one canary, one release
    state, found by anyone looking at the canary (``kubectl get configmap
    web-canary.autocanary-state``) without the daemon's config.
    """
    return f"{canary}{STATE_OBJECT_SUFFIX}"


#: ``blocked``: a new canary revision that could not start (nothing was scaled for
#: it); resume, promote or abort it, or change the canary again.
Phase = Literal[
    "idle",
    "blocked",
    "progressing",
    "paused",
    "promoting",
    "succeeded",
    "rollingBack",
    "rolledBack",
]
PHASES: tuple[Phase, ...] = get_args(Phase)
Stage = Literal["waitingReady", "analysing"]
Command = Literal["promote", "abort", "retry", "pause", "resume"]
COMMANDS: tuple[Command, ...] = ("promote", "abort", "retry", "pause", "resume")
MAX_VERDICTS = 10

#: Phases in which a release is under way (the daemon owns both Deployments' scale).
ACTIVE_PHASES: frozenset[Phase] = frozenset({"progressing", "paused", "promoting", "rollingBack"})
#: Phases with no release in flight: nothing changes until the Deployments do.
SETTLED_PHASES: frozenset[Phase] = frozenset(PHASES) - ACTIVE_PHASES
#: Notices kept waiting at most; past it the oldest non-critical ones are dropped (and logged).
MAX_PENDING = 20

NoticeTarget = Literal["canary", "stable"]


class Reason(StrEnum):
    """What happened to a rollout: each transition's Kubernetes Event reason, one spelling."""

    RELEASE_DETECTED = "ReleaseDetected"
    STEP_ADVANCED = "StepAdvanced"
    SWITCHED = "Switched"  # blue/green: the active Service moved to the new version
    ROUTE_CHANGED = "RouteChanged"  # gateway: the HTTPRoute was deleted or edited by others
    ANALYSIS_FAILED = "AnalysisFailed"
    ANALYSIS_INCONCLUSIVE = "AnalysisInconclusive"
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    CANARY_POD_FAILED = "CanaryPodFailed"
    ROLLED_BACK = "RolledBack"
    PROMOTING = "Promoting"
    PROMOTED = "Promoted"
    SUPERSEDED = "Superseded"
    PAUSED = "Paused"
    RESUMED = "Resumed"
    COMMAND_IGNORED = "CommandIgnored"
    CANARY_DELETED = "CanaryDeleted"
    STATE_CORRUPT = "StateCorrupt"
    STATE_RECOVERED = "StateRecovered"
    REPLICAS_OVERRIDDEN = "ReplicasOverridden"
    PERMANENT_ERROR = "PermanentError"  # a tick failed in a way retrying alone cannot fix


#: Strict: a value of the wrong JSON type is an error, never coerced (``"10"`` is no total).
_STRICT = ConfigDict(strict=True, extra="forbid")


def _utc(value: datetime) -> datetime:
    # Hand edits may lack an offset; every time the daemon writes is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


#: A point in time: an ISO 8601 string when stored, always timezone-aware once read.
Time = Annotated[datetime, AfterValidator(_utc), PlainSerializer(_iso, when_used="json")]
#: A counter: never negative.
Count = Annotated[int, Field(ge=0)]
#: A duration in seconds: never negative.
Seconds = Annotated[float, Field(ge=0)]


def _fits(value: JudgeState | None) -> JudgeState | None:
    return None if value is None else check_judge_state(value)


#: The sequential judge's evidence, its parts checked to fit together.
Evidence = Annotated[JudgeState | None, AfterValidator(_fits)]


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

    __pydantic_config__ = _STRICT

    id: str
    reason: Reason  # the Kubernetes Event reason
    message: str
    kind: AlertKind | None  # None for an Event only
    warning: bool
    at: Time
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

    __pydantic_config__ = _STRICT

    at: Time
    step: int
    verdict: str
    reason: str
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class RolloutState:
    """Everything about a rollout's release that cannot be re-read from the cluster."""

    __pydantic_config__ = _STRICT

    phase: Phase = "idle"
    revision: str = ""  # the canary revision this release is about
    stable_revision: str = ""  # the stable's revision when the release started
    canary_version: str = ""
    stable_version: str = ""
    stable_template: dict[str, Any] | None = None  # restored if a promotion must be undone
    canary_generation: Count = 0  # the canary's generation holding this release's template
    total: Count = 0
    step: Count = 0  # 0-based index into the rollout's steps
    stage: Stage = "waitingReady"
    step_started_at: Time | None = None
    ready_at: Time | None = None
    not_ready_since: Time | None = None
    not_ready_seconds: Seconds = 0.0  # earlier spells of this step's canary not Ready, in all
    last_analysis_at: Time | None = None
    step_passes: Count = 0
    failures: Count = 0
    last_failure_at: Time | None = None  # the interval that last counted as failed ended then
    inconclusive: Count = 0  # consecutive
    started_at: Time | None = None
    finished_at: Time | None = None
    rolled_back_revision: str = ""
    message: str = ""
    verdicts: tuple[VerdictRecord, ...] = ()
    judge: Evidence = None  # the sequential judge's evidence, when enabled
    pending: tuple[Notice, ...] = ()  # transitions still to be told (Events, alerts)
    notices: Count = 0  # notices created for this rollout so far: makes each notice's id unique
    corrupt_seen: str = ""  # on the stable's record: digest of a corrupt canary state reported

    def with_verdict(self, record: VerdictRecord) -> tuple[VerdictRecord, ...]:
        """The recent verdicts with ``record`` appended, oldest dropped past the limit."""
        return (*self.verdicts, record)[-MAX_VERDICTS:]


_CODEC: TypeAdapter[RolloutState] = TypeAdapter(RolloutState)


def dumps(state: RolloutState) -> str:
    """Serialise a state for storing (compact JSON with a schema version).

    NaN and infinities are written as null: they are not JSON, and other
    tools reading the state would choke on them.
    """
    data = _CODEC.dump_python(state, mode="json", by_alias=True)
    data["schema"] = SCHEMA_VERSION
    return json.dumps(data, separators=(",", ":"), sort_keys=True, allow_nan=False)


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


def _where(location: tuple[int | str, ...]) -> str:
    """A pydantic error location as a field path: ``pending[0].at``."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def _problems(error: ValidationError) -> str:
    problems = []
    for e in error.errors(include_url=False):
        where = _where(e["loc"])
        if e["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            problems.append(f"{where}: unknown field")
            continue
        got = "" if e["type"] in ("missing", "value_error") else f", got {e['input']!r:.80}"
        problems.append(f"{where}: {e['msg'][:1].lower()}{e['msg'][1:]}{got}")
    return "; ".join(problems)


def _check_meaning(state: RolloutState) -> None:
    """Reject well-typed values no daemon writes, which a decision cannot act on."""
    if state.phase in ACTIVE_PHASES:
        if state.total < 1:
            raise StateCorrupt(
                f"total: a {state.phase} release needs at least 1 replica, got {state.total}"
            )
        if not state.revision:
            raise StateCorrupt(f"revision: a {state.phase} release needs its canary revision")


def loads(text: str) -> RolloutState:
    """Parse a stored state; raise :class:`StateCorrupt` (only) naming each wrong field."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise StateCorrupt(f"state is not JSON: {e}") from e
    if not isinstance(data, dict):
        raise StateCorrupt("state is not a JSON object")
    schema = data.pop("schema", None)
    if schema != SCHEMA_VERSION:
        raise StateCorrupt(
            f"state has schema {schema!r}; this daemon reads schema {SCHEMA_VERSION}"
        )
    if data.get("phase") == "paused" and not data.get("total"):
        # Daemons before the blocked phase wrote a release that could not start as
        # paused with total 0, which they refused to read back: it is blocked.
        data["phase"] = "blocked"
    if isinstance(data.get("judge"), dict) and JudgeState.outdated(data["judge"]):
        # Evidence in a format before this daemon's is not read back: the judge
        # starts afresh (see JudgeState.outdated); the rest of the state is kept.
        data["judge"] = None
    try:
        # Validated as JSON (not Python) data: strict, yet arrays are tuples, strings times.
        state = _CODEC.validate_json(json.dumps(data))
    except ValidationError as e:
        raise StateCorrupt(_problems(e)) from e
    _check_meaning(state)
    return state
