"""One tick of one rollout: read the cluster, decide, act, tell.

``RolloutEngine.tick()`` is level-triggered and keeps nothing in memory
between ticks: the state comes from its ConfigMap (owned by the canary) each
time. Order of effects, so a crash at any point is repaired by the next tick:

1. write the new state, with the transitions it causes as pending notices, in
   one write guarded by resourceVersion (a conflict aborts the tick), and only
   when it changed; then remove the command it consumed (the ConfigMap marks
   it consumed, so a crash in between never applies it twice) and an older
   daemon's state annotation (moved into the ConfigMap by that write);
2. keep the release's essentials (total, phase, the stable's original
   template) on the stable Deployment too, before the stable is ever scaled
   down, so a canary deleted or a state removed mid-release never shrinks it;
3. bring the Deployments to the desired template and replica counts (stable
   first, so capacity never dips while the canary shrinks);
4. tell what is pending, most urgent first: an Event per notice (named after
   it, so a second attempt finds the first) and its alerts; then clear what
   was told. Whatever a crash interrupts is told by the next tick, so every
   transition is announced at least once, and Events exactly once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import structlog

from autocanary.adapters.kubernetes import (
    FIELD_MANAGER,
    PHASE_LABEL,
    DeploymentRecord,
    KubeClient,
    ServiceRecord,
    StoredState,
    command_mark,
)
from autocanary.adapters.notify import Notifier
from autocanary.adapters.prometheus import PrometheusClient
from autocanary.analysis import thresholds
from autocanary.analysis.verdict import CheckSummary
from autocanary.config.models import AlertKind, RolloutConfig
from autocanary.config.units import format_duration
from autocanary.daemon import retry
from autocanary.daemon.metrics import DaemonMetrics
from autocanary.errors import (
    AutocanaryError,
    InvalidResource,
    KubernetesForbidden,
    PermanentError,
    PrometheusUnavailable,
    QueryError,
    ResourceNotFound,
    StateConflict,
    StateCorrupt,
    TransientError,
)
from autocanary.promql import Sample
from autocanary.rollout import decision, interval, revision, tick
from autocanary.rollout import route as route_math
from autocanary.rollout import state as state_codec
from autocanary.rollout.alert import SEVERITY, Alert
from autocanary.rollout.pods import PodView
from autocanary.rollout.revision import JSON
from autocanary.rollout.state import (
    COMMAND_ANNOTATION,
    RELEASE_ANNOTATION,
    Notice,
    Reason,
    RolloutState,
)

Clock = Callable[[], datetime]


class DeploymentReader(Protocol):
    """Where a tick reads Deployments: the API (a KubeClient) or the daemon's watch cache."""

    def read_deployment(self, namespace: str, name: str) -> DeploymentRecord:
        """The Deployment as known now; :class:`ResourceNotFound` if there is none."""
        ...


class StateReader(Protocol):
    """Where a tick reads its rollout's state: the API (a KubeClient) or the watch cache."""

    def read_state(self, canary: DeploymentRecord) -> StoredState:
        """The state of the rollout whose canary is ``canary``, as stored now."""
        ...


class PodLister(Protocol):
    """Where a tick lists pods: the API (a KubeClient) or the daemon's watch cache."""

    def list_pods(self, namespace: str, selector: dict[str, str]) -> list[JSON]:
        """The pods matching a Deployment's ``matchLabels`` selector, as JSON."""
        ...


Log = structlog.typing.FilteringBoundLogger

#: How long a notice's alerts are tried (again, tick after tick) before giving up.
NOTICE_TTL = timedelta(hours=1)
#: How soon to tick again while notices wait for their sinks.
NOTICE_POLL = timedelta(seconds=2)
#: Share of the interval an analysis may spend on queries: a Prometheus that
#: hangs must leave time for commands and deadlines in the same interval.
ANALYSIS_BUDGET = 0.5
_RANK = {"critical": 0, "warning": 1, "info": 2}
#: Test-only fault injection, never set in production: Event reasons, comma
#: separated. A daemon started with it kills itself (SIGKILL) right after the
#: state write that records a transition with one of these reasons, before
#: acting or telling anything: end-to-end tests crash it at the worst instant,
#: deterministically. :data:`MIGRATED` stands for the write that moves an older
#: daemon's state annotation into the ConfigMap (killed before the annotation
#: is removed). Unset (always, outside tests), it does nothing.
KILL_AFTER_WRITE_ENV = "AUTOCANARY_TEST_KILL_AFTER_WRITE"
MIGRATED = "StateMigrated"


def _kill_point(transitions: tuple[decision.Transition, ...], *, migrated: bool) -> None:
    wanted = os.environ.get(KILL_AFTER_WRITE_ENV)
    if not wanted:
        return
    reasons = {r.strip() for r in wanted.split(",")}
    written = {str(t.reason) for t in transitions} | ({MIGRATED} if migrated else set())
    if written & reasons:
        os.kill(os.getpid(), signal.SIGKILL)


#: While the scrape interval of a rollout's series is unknown (no series yet,
#: Prometheus down), ask again this often.
SCRAPE_INTERVAL_RETRY_SECONDS = 60.0


def utcnow() -> datetime:
    """The current time, timezone-aware."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class _Services:
    """A blue/green rollout's Services as read this tick."""

    active: ServiceRecord | None = None
    preview: ServiceRecord | None = None


@dataclass(frozen=True)
class _Route:
    """A gateway rollout's HTTPRoute as read this tick (``None``: not found)."""

    obj: revision.JSON | None = None
    view: route_math.RouteView | None = None


@dataclass(frozen=True)
class TickResult:
    """What a tick did, for the scheduler and for tests."""

    phase: str
    requeue_after: timedelta | None
    transitions: tuple[decision.Transition, ...]
    state: RolloutState


def _view(record: DeploymentRecord) -> decision.DeploymentView:
    return decision.DeploymentView(
        name=record.name,
        template=record.template,
        replicas=record.replicas,
        ready=record.ready,
        available=record.available,
        updated=record.updated,
        current=record.current,
        generation=record.generation,
        observed_generation=record.observed_generation,
    )


def _severity(notice: Notice) -> str:
    return SEVERITY[notice.kind] if notice.kind is not None else "info"


class _Budgeted:
    """The Prometheus client with one wall-clock budget shared by an interval's queries."""

    def __init__(self, client: PrometheusClient, seconds: float) -> None:
        self._client = client
        self._seconds = seconds
        self._deadline = time.monotonic() + seconds

    def _left(self) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise PrometheusUnavailable(
                f"not run: this interval's queries used up their {self._seconds:g}s "
                f"(Prometheus at {self._client.url} is slow to answer)"
            )
        return left

    def query_value(self, promql: str, at: datetime | None = None) -> float | None:
        """As :meth:`PrometheusClient.query_value`, within what is left of the budget."""
        return self._client.query_value(promql, at, timeout=self._left())

    def query_vector(self, promql: str, at: datetime | None = None) -> list[Sample]:
        """As :meth:`PrometheusClient.query_vector`, within what is left of the budget."""
        return self._client.query_vector(promql, at, timeout=self._left())


class RolloutEngine:
    """Drives one configured rollout, one tick at a time."""

    def __init__(
        self,
        rollout: RolloutConfig,
        *,
        kube: KubeClient,
        prometheus: PrometheusClient,
        notifier: Notifier,
        metrics: DaemonMetrics,
        clock: Clock = utcnow,
        reads: DeploymentReader | None = None,
        pods: PodLister | None = None,
        states: StateReader | None = None,
    ) -> None:
        """Bind the adapters a tick uses; nothing is read until :meth:`tick`.

        ``reads`` serves the tick's Deployment reads, ``pods`` its pod lists and
        ``states`` its state reads (the daemon's watch caches); without them they
        go through ``kube``, which does every write.
        """
        self.rollout = rollout
        self.kube = kube
        self.reads: DeploymentReader = reads if reads is not None else kube
        self.pods: PodLister = pods if pods is not None else kube
        self.states: StateReader = states if states is not None else kube
        self.prometheus = prometheus
        self.notifier = notifier
        self.metrics = metrics
        self.clock = clock
        self._log = structlog.get_logger("autocanary.daemon.engine").bind(
            rollout=rollout.name, namespace=rollout.namespace
        )
        self._scrape_interval: timedelta | None = None
        self._last_observation: tuple[tuple[str, ...], decision.Observation] | None = None
        self._scrape_asked_at: float | None = None
        # Series exist from the start at 0, so the first rollback after a restart is an
        # increase that alert rules see, not a series appearing at 1.
        metrics.rollbacks.labels(rollout.name, rollout.namespace)
        metrics.promotions.labels(rollout.name, rollout.namespace)

    def report_permanent(self, error: PermanentError) -> None:
        """Say a permanent error as a Warning Event on the rollout's canary, else its stable.

        One Event per distinct error: it is named after the error, so the
        retries that follow (with backoff) find it and add none. Nothing is
        recorded when neither Deployment can be read (the error may be that).
        """
        r = self.rollout
        message = (
            f"rollout {r.name}: {error}. Retried with backoff (from "
            f"{format_duration(retry.FIRST_BACKOFF)}, doubling up to "
            f"{format_duration(retry.MAX_BACKOFF)}) until the cause is fixed; a config "
            f"reload retries at once"
        )
        key = "error-" + hashlib.sha256(str(error).encode()).hexdigest()[:16]
        for name in (r.canary_name, r.stable):
            try:
                about = self.reads.read_deployment(r.namespace, name)
            except AutocanaryError:
                continue
            try:
                self.kube.record_event(
                    about, Reason.PERMANENT_ERROR, message, warning=True, key=key
                )
            except AutocanaryError as e:
                self._log.warning(
                    "could not record Event", reason=Reason.PERMANENT_ERROR, error=str(e)
                )
            return

    # ---- the analysis window ---------------------------------------------------------------

    def scrape_interval(self) -> timedelta | None:
        """How often Prometheus scrapes the rollout's series, once known (asked once a minute).

        When first known, logs the window the analysis uses, and warns when a
        configured ``analysis.window`` is too short for it.
        """
        # Asked at start-up and reload too, outside any tick: no revision or step then.
        outside = {"revision": None, "step": None}
        known = structlog.contextvars.get_contextvars()
        with structlog.contextvars.bound_contextvars(**{**outside, **known}):
            return self._scrape_interval_now()

    def _scrape_interval_now(self) -> timedelta | None:
        if self._scrape_interval is not None:
            return self._scrape_interval
        now = time.monotonic()
        if (
            self._scrape_asked_at is not None
            and now - self._scrape_asked_at < SCRAPE_INTERVAL_RETRY_SECONDS
        ):
            return None
        self._scrape_asked_at = now
        r = self.rollout
        series = thresholds.requests_series(r)
        try:
            found = self.prometheus.scrape_interval(series)
        except (QueryError, PrometheusUnavailable) as e:
            self._log.warning("cannot read the scrape interval", series=series, error=str(e))
            return None
        if found is None:
            self._log.info("no series yet to read the scrape interval from", series=series)
            return None
        self._scrape_interval = found
        window = r.analysis.window or thresholds.default_window(r.interval, found)
        self._log.info(
            "analysis window",
            scrape_interval=format_duration(found),
            window=format_duration(window),
            configured=r.analysis.window is not None,
        )
        problem = thresholds.window_problem(r, found)
        if problem is not None:
            self._log.warning("analysis window too short", problem=problem)
        return found

    def effective_rollout(self) -> RolloutConfig:
        """The rollout with ``analysis.window`` filled in from the scrape interval when unset."""
        return thresholds.with_window(self.rollout, self.scrape_interval())

    # ---- reading ---------------------------------------------------------------------------

    def _observation(
        self, canary: DeploymentRecord, stable: DeploymentRecord, stored: StoredState
    ) -> decision.Observation:
        # Hashing both templates is most of an idle tick's work; the same versions of
        # both Deployments (served by the watch cache tick after tick) observe the same.
        key = (canary.uid, canary.resource_version, stable.uid, stable.resource_version)
        if self._last_observation is not None and self._last_observation[0] == key:
            return self._last_observation[1]
        r = self.rollout
        obs = tick.observation(
            _view(stable),
            _view(canary),
            role_labels=frozenset(
                revision.role_labels(r.role_labels, stable.selector, canary.selector)
            ),
            version_label=r.version_label,
            command=None if _consumed_before(canary, stored) else _command(canary),
        )
        self._last_observation = (key, obs)
        return obs

    def _corrupt_message(
        self, error: StateCorrupt, record: RolloutState | None, stored: StoredState
    ) -> str:
        r = self.rollout
        if record is not None and record.phase in state_codec.ACTIVE_PHASES:
            removing = (
                f"removing it restarts release {record.canary_version} at step 1 with its "
                f"total of {record.total} replicas (kept on the stable Deployment)"
            )
        else:
            removing = "removing it starts the rollout over from idle"
        return (
            f"rollout {r.name}: the state in {stored.where} cannot be read ({error}). "
            f"Nothing is done until it is fixed or removed; {removing}: {stored.removal}"
        )

    def _record_of(self, stable: DeploymentRecord, log: Log) -> RolloutState | None:
        raw = stable.annotations.get(RELEASE_ANNOTATION)
        if not raw:
            return None
        try:
            return state_codec.loads(raw)
        except StateCorrupt as e:
            # Only a fallback: the canary's state is the authority while it is there.
            log.warning(
                "the stable's release record cannot be read; it will be rewritten",
                annotation=RELEASE_ANNOTATION,
                error=str(e),
            )
            return None

    def _with_pods(
        self,
        obs: decision.Observation,
        canary: DeploymentRecord,
        current: RolloutState,
    ) -> decision.Observation:
        """``obs`` with the canary's pods while a release progresses."""
        if current.phase != "progressing":
            return obs
        r = self.rollout
        # The kubelet says a crash loop or a pull error long before a deadline would.
        try:
            found = self.pods.list_pods(r.namespace, canary.selector)
        except KubernetesForbidden as e:
            # Without the pods the release still goes on; only the deadline catches a
            # crash loop then. Said on every tick, so the missing grant gets noticed.
            self._log.warning("cannot read the canary's pods", error=str(e))
            found = []
        return dataclasses.replace(
            obs, canary_pods=tuple(PodView.from_json(p, r.version_label) for p in found)
        )

    # ---- the tick --------------------------------------------------------------------------

    def tick(self) -> TickResult:
        """Read, decide, act and tell, once. Raises autocanary errors for the caller to count.

        Binds the rollout, its namespace, revision and step to structlog's
        context as they become known, so every line logged during the tick
        (and the caller's line about a tick that failed) carries them.
        """
        started = time.monotonic()
        structlog.contextvars.bind_contextvars(
            rollout=self.rollout.name, namespace=self.rollout.namespace, revision=None, step=None
        )
        read = self._read(started)
        if isinstance(read, TickResult):
            return read
        canary, stable, record = read
        stored = self.states.read_state(canary)
        obs = self._observation(canary, stable, stored)
        services = self._services()
        route = self._route()
        obs = dataclasses.replace(
            obs,
            active_selector=services.active.selector if services.active else None,
            preview_selector=services.preview.selector if services.preview else None,
            route=route.view,
        )
        now = self.clock()
        current, recovered = self._current(canary, stable, record, obs, now, stored=stored)
        obs = self._with_pods(obs, canary, current)
        # Prometheus is asked for the scrape interval (the window) only once a release
        # runs: thousands of idle rollouts must not query it every minute, and the tick
        # that detects a release must not wait for it (nothing is analysed before the
        # step's pods are Ready).
        if current.phase in state_codec.ACTIVE_PHASES:
            r = self.effective_rollout()
        else:
            r = thresholds.with_window(self.rollout, self._scrape_interval)

        structlog.contextvars.bind_contextvars(
            revision=current.revision or obs.canary_revision,
            step=current.step + 1 if current.phase in state_codec.ACTIVE_PHASES else None,
        )
        log = self._log
        cluster = _KubeCluster(
            self, read, stored, services, route, obs=obs, recovered=recovered, now=now, log=log
        )
        done = tick.run(r, current, cluster, _PrometheusMetrics(self, cluster), now)
        if not done.committed:
            log.info("state changed meanwhile; deciding again on the next tick")
            return TickResult(current.phase, timedelta(seconds=1), (), current)
        canary, stable, log, transitions = cluster.canary, cluster.stable, cluster.log, cluster.told
        new = self._tell_pending(cluster.new, cluster.stored, canary, stable, log)
        if cluster.record is not None and cluster.record.pending:
            self._write_record_pending(stable, cluster.record, canary, log)
        self._export(new, obs)
        elapsed = time.monotonic() - started
        self.metrics.observe_tick(r.name, elapsed)
        log.info(
            "tick",
            phase=new.phase,
            stage=new.stage if new.phase == "progressing" else None,
            canary_replicas=obs.canary.replicas,
            stable_replicas=obs.stable.replicas,
            verdict=done.verdict.verdict if done.verdict else None,
            transitions=[t.reason for t in transitions] or None,
            pending=len(new.pending) or None,
            message=new.message,
            duration_ms=round(elapsed * 1000, 1),
        )
        requeue = done.decision.requeue_after
        if new.pending:
            requeue = min(requeue, NOTICE_POLL) if requeue is not None else NOTICE_POLL
        return TickResult(new.phase, requeue, transitions, new)

    def _read(
        self, started: float
    ) -> tuple[DeploymentRecord, DeploymentRecord, RolloutState | None] | TickResult:
        """Both Deployments and the stable's release record; a result if the canary is gone."""
        r = self.rollout
        try:
            canary = self.reads.read_deployment(r.namespace, r.canary_name)
        except ResourceNotFound as missing:
            try:
                stable = self.reads.read_deployment(r.namespace, r.stable)
            except ResourceNotFound:
                raise missing from None
            return self._canary_missing(stable, self._record_of(stable, self._log), started)
        stable = self.reads.read_deployment(r.namespace, r.stable)
        return canary, stable, self._record_of(stable, self._log)

    def _current(
        self,
        canary: DeploymentRecord,
        stable: DeploymentRecord,
        record: RolloutState | None,
        obs: decision.Observation,
        now: datetime,
        *,
        stored: StoredState,
    ) -> tuple[RolloutState, tuple[decision.Transition, ...]]:
        """The state to decide on, recovered from the stable's record if the canary lost it."""
        raw = stored.text
        try:
            current = state_codec.loads(raw) if raw else RolloutState()
        except StateCorrupt as e:
            self._state_corrupt(canary, stable, record, obs, raw=raw or "", error=e, stored=stored)
            raise StateCorrupt(self._corrupt_message(e, record, stored)) from e
        if not raw and record is not None and record.phase in state_codec.ACTIVE_PHASES:
            return self._recover(record, canary, now, stored)
        return current, ()

    # ---- notices ---------------------------------------------------------------------------

    def _notice(
        self,
        state: RolloutState,
        seq: int,
        transition: decision.Transition,
        now: datetime,
        *,
        target: state_codec.NoticeTarget = "canary",
        revision_: str | None = None,
        source: str = "c",
    ) -> Notice:
        r = self.rollout
        rev = revision_ if revision_ is not None else state.revision
        sinks = self.notifier.route(transition.kind, r.alerts) if transition.kind else []
        # The canary's state and the stable's record count their notices apart:
        # "c" and "s" keep their ids (and so their Event names) from meeting.
        return Notice(
            id=f"{r.name}.{rev[:12] or 'none'}.{int(now.timestamp() * 1000)}.{source}{seq}",
            reason=transition.reason,
            message=transition.message,
            kind=transition.kind,
            warning=transition.warning,
            at=now,
            revision=rev,
            canary_version=state.canary_version,
            stable_version=state.stable_version,
            step=state.step + 1 if state.total else None,
            sinks=tuple(sinks),
            target=target,
            checks=tuple(dataclasses.asdict(c) for c in transition.checks),
        )

    def _with_notices(
        self,
        current: RolloutState,
        new: RolloutState,
        told: list[tuple[decision.Transition, RolloutState]],
        now: datetime,
    ) -> RolloutState:
        """``new`` with the notices still pending from ``current`` and one per transition.

        Each transition comes with the state of the release it is about.
        """
        notices = [
            self._notice(about, current.notices + i + 1, t, now)
            for i, (t, about) in enumerate(told)
        ]
        pending = self._bounded((*current.pending, *notices))
        return dataclasses.replace(new, pending=pending, notices=current.notices + len(notices))

    def _bounded(self, pending: tuple[Notice, ...]) -> tuple[Notice, ...]:
        kept = list(pending)
        while len(kept) > state_codec.MAX_PENDING:
            lesser = [n for n in kept if _severity(n) != "critical"]
            dropped = lesser[0] if lesser else kept[0]
            kept.remove(dropped)
            self._log.error(
                "too many untold transitions; dropping one",
                reason=dropped.reason,
                notice=dropped.id,
                limit=state_codec.MAX_PENDING,
            )
        return tuple(kept)

    def _alert(self, notice: Notice, kind: AlertKind) -> Alert:
        r = self.rollout
        return Alert(
            kind=kind,
            reason=notice.reason,
            rollout=r.name,
            namespace=r.namespace,
            revision=notice.revision,
            canary_version=notice.canary_version,
            stable_version=notice.stable_version,
            step=notice.step,
            total_steps=len(r.plan),
            message=notice.message,
            at=notice.at,
            checks=tuple(CheckSummary(**c) for c in notice.checks),
            id=notice.id,
        )

    def _record(self, notice: Notice, about: DeploymentRecord | None, log: Log) -> Notice:
        """Record the notice's Event (once: it is named after the notice)."""
        if not notice.event:
            return notice
        if about is None:
            return dataclasses.replace(notice, event=False)
        try:
            created = self.kube.record_event(
                about, notice.reason, notice.message, warning=notice.warning, key=notice.id
            )
        except TransientError as e:
            log.warning("could not record Event; trying again", reason=notice.reason, error=str(e))
            return notice
        except PermanentError as e:
            log.error("cannot record Event; giving up", reason=notice.reason, error=str(e))
            created = True
        if created:
            # Counted where the Event is created, so a repeat after a crash is not.
            self._count(notice)
        return dataclasses.replace(notice, event=False)

    def _send(self, notice: Notice, log: Log) -> Notice:
        """Send the notice's alerts to the sinks that have not taken it yet."""
        if not notice.sinks or notice.kind is None:
            return notice
        if self.clock() - notice.at > NOTICE_TTL:
            log.error(
                "alert given up: its sinks did not take it in time",
                reason=notice.reason,
                sinks=list(notice.sinks),
                notice=notice.id,
            )
            return dataclasses.replace(notice, sinks=())
        states = self.notifier.deliver(self._alert(notice, notice.kind), notice.sinks)
        left = tuple(s for s in notice.sinks if states.get(s) not in ("ok", "rejected"))
        return dataclasses.replace(notice, sinks=left)

    def _count(self, notice: Notice) -> None:
        r = self.rollout
        ended = notice.reason in (Reason.ROLLED_BACK, Reason.PROMOTED, Reason.CANARY_DELETED)
        if ended and notice.kind is AlertKind.ROLLED_BACK:
            self.metrics.rollbacks.labels(r.name, r.namespace).inc()
        elif ended and notice.kind is AlertKind.PROMOTED:
            self.metrics.promotions.labels(r.name, r.namespace).inc()

    def _tell_all(
        self,
        pending: tuple[Notice, ...],
        canary: DeploymentRecord | None,
        stable: DeploymentRecord,
        log: Log,
    ) -> tuple[Notice, ...]:
        # Events in the order things happened (kubectl describe reads as a story);
        # alerts most urgent first, so a rollback never queues behind lesser news.
        told = [self._record(n, canary if n.target == "canary" else stable, log) for n in pending]
        for i in sorted(range(len(told)), key=lambda i: (_RANK[_severity(told[i])], i)):
            told[i] = self._send(told[i], log)
        return tuple(n for n in told if not n.done)

    def _tell_pending(
        self,
        new: RolloutState,
        stored: StoredState,
        canary: DeploymentRecord,
        stable: DeploymentRecord,
        log: Log,
    ) -> RolloutState:
        """Tell the canary state's pending notices; write what is left of them."""
        if not new.pending:
            return new
        left = self._tell_all(new.pending, canary, stable, log)
        if left == new.pending:
            return new
        told = dataclasses.replace(new, pending=left)
        try:
            self.kube.save_state(canary, stored, state_codec.dumps(told))
        except (StateConflict, TransientError) as e:
            # Told again next tick: Events are found by name, alerts carry their id.
            log.info("could not clear told notices; they are told again next tick", error=str(e))
            return new
        return told

    # ---- the stable's release record -------------------------------------------------------

    def _keep_record(
        self, stable: DeploymentRecord, record: RolloutState | None, new: RolloutState
    ) -> tuple[DeploymentRecord, RolloutState | None]:
        """Keep the release's essentials on the stable in step with the canary's state."""
        if record is None and new.phase == "idle":
            return stable, None
        wanted = state_codec.essentials(new, record)
        if record is not None and state_codec.dumps(wanted) == state_codec.dumps(record):
            return stable, record
        stable = self.kube.write_record(stable, state_codec.dumps(wanted))
        return stable, wanted

    def _recover(
        self, record: RolloutState, canary: DeploymentRecord, now: datetime, stored: StoredState
    ) -> tuple[RolloutState, tuple[decision.Transition, ...]]:
        """A release's state rebuilt from the stable's record, when the canary's is gone.

        The release's total is kept (the stable may be scaled down right now);
        a progressing release starts its steps over, since how far it got and
        what was judged are lost.
        """
        phase = record.phase
        state = dataclasses.replace(
            record,
            phase=phase,
            step=0,
            stage="waitingReady",
            step_started_at=now,
            canary_generation=canary.generation,
            pending=(),
            notices=0,
            corrupt_seen="",
            message=f"state recovered from the stable's {RELEASE_ANNOTATION}",
        )
        message = (
            f"the state of a {phase} release ({record.canary_version}, revision "
            f"{record.revision}) is gone from {stored.where}; recovered its total of "
            f"{record.total} replicas from the stable's {RELEASE_ANNOTATION}"
            + ("; its steps start over" if phase == "progressing" else "")
        )
        return state, (decision.Transition(Reason.STATE_RECOVERED, message, None, warning=True),)

    def _canary_missing(
        self, stable: DeploymentRecord, record: RolloutState | None, started: float
    ) -> TickResult:
        """The canary Deployment does not exist: restore the stable if a release was under way."""
        r = self.rollout
        structlog.contextvars.bind_contextvars(
            revision=record.revision if record else None, step=None
        )
        log = self._log
        missing = ResourceNotFound(
            f"rollout {r.name}: the canary Deployment {r.namespace}/{r.canary_name} does not exist"
        )
        if record is None or record.phase not in state_codec.ACTIVE_PHASES:
            if record is not None and record.pending:
                self._write_record_pending(stable, record, None, log)
            raise missing
        now = self.clock()
        original = record.stable_template
        changed = original is not None and stable.template != original
        promoted = record.phase == "promoting" and changed
        if promoted:
            kind = AlertKind.PROMOTED
            outcome = (
                f"the stable keeps the release's template (the promotion had begun) and is "
                f"scaled back to its {record.total} replicas"
            )
        else:
            kind = AlertKind.ROLLED_BACK
            outcome = f"the stable is scaled back to its {record.total} replicas" + (
                " and gets its original template back" if changed else ""
            )
        if r.gateway is not None:
            outcome += (
                f"; the {route_math.describe(r.gateway, r.namespace)} sends every request to "
                f"{r.gateway.stable_service} again"
            )
        message = (
            f"the canary Deployment {r.canary_name} was deleted during the {record.phase} "
            f"release of {record.canary_version} (revision {record.revision}); {outcome}"
        )
        transition = decision.Transition(Reason.CANARY_DELETED, message, kind, warning=True)
        notice = self._notice(
            record, record.notices + 1, transition, now, target="stable", source="s"
        )
        ended = dataclasses.replace(
            record,
            phase="succeeded" if promoted else "rolledBack",
            finished_at=now,
            rolled_back_revision=record.rolled_back_revision if promoted else record.revision,
            pending=self._bounded((*record.pending, notice)),
            notices=record.notices + 1,
        )
        log.warning("canary deleted mid-release", message=message, kind=kind)
        # The record and the stable's replicas in one write: capacity comes back at once.
        stable = self.kube.write_record(stable, state_codec.dumps(ended), replicas=record.total)
        if changed and not promoted and original is not None:
            stable = self.kube.replace_template(r.namespace, r.stable, original)
        # Requests the route still sends to the canary's Service find no pods: back to the stable.
        route = self._route()
        self._steer(decision.Desired(canary_weight=0, ab=False), route, log)
        self._write_record_pending(stable, ended, None, log)
        self._export(ended, None)
        self.metrics.observe_tick(r.name, time.monotonic() - started)
        return TickResult(ended.phase, None, (transition,), ended)

    def _write_record_pending(
        self,
        stable: DeploymentRecord,
        record: RolloutState,
        canary: DeploymentRecord | None,
        log: Log,
    ) -> None:
        """Tell the stable record's pending notices and write what is left of them."""
        left = self._tell_all(record.pending, canary, stable, log)
        if left == record.pending:
            return
        try:
            self.kube.write_record(
                stable, state_codec.dumps(dataclasses.replace(record, pending=left))
            )
        except (StateConflict, TransientError) as e:
            log.info("could not clear told notices; they are told again next tick", error=str(e))

    def _state_corrupt(
        self,
        canary: DeploymentRecord,
        stable: DeploymentRecord,
        record: RolloutState | None,
        obs: decision.Observation,
        *,
        raw: str,
        error: StateCorrupt,
        stored: StoredState,
    ) -> None:
        """Tell people (once per corrupt value) that the rollout is stuck on its state."""
        structlog.contextvars.bind_contextvars(revision=obs.canary_revision, step=None)
        log = self._log
        digest = hashlib.sha256(raw.encode("utf-8", "replace")).hexdigest()[:16]
        base = record if record is not None else RolloutState()
        if base.corrupt_seen != digest:
            message = self._corrupt_message(error, record, stored)
            transition = decision.Transition(
                Reason.STATE_CORRUPT, message, AlertKind.PAUSED, warning=True
            )
            about = dataclasses.replace(
                base,
                canary_version=base.canary_version or obs.canary_version,
                stable_version=base.stable_version or obs.stable_version,
            )
            notice = self._notice(
                about,
                base.notices + 1,
                transition,
                self.clock(),
                revision_=obs.canary_revision,
                source="s",
            )
            base = dataclasses.replace(
                base,
                corrupt_seen=digest,
                pending=self._bounded((*base.pending, notice)),
                notices=base.notices + 1,
            )
            try:
                stable = self.kube.write_record(stable, state_codec.dumps(base))
            except (StateConflict, TransientError) as e:
                log.info("could not record the corrupt state's notice", error=str(e))
                return
        if base.pending:
            self._write_record_pending(stable, base, canary, log)

    # ---- analysis --------------------------------------------------------------------------

    def _pod_sets(self, canary: DeploymentRecord, stable: DeploymentRecord) -> thresholds.PodSets:
        """Both Deployments' pods now, those being deleted too (they served in the window)."""

        def side(record: DeploymentRecord) -> thresholds.Pods:
            pods = [
                PodView.from_json(p, self.rollout.version_label)
                for p in self.pods.list_pods(self.rollout.namespace, record.selector)
            ]
            hashes = {p.labels.get("pod-template-hash", "") for p in pods} - {""}
            return thresholds.Pods(tuple(sorted(p.name for p in pods)), tuple(sorted(hashes)))

        return thresholds.PodSets(canary=side(canary), stable=side(stable))

    def _analyse(
        self,
        current: RolloutState,
        now: datetime,
        log: Log,
        pods: thresholds.PodSets | None,
    ) -> thresholds.IntervalVerdict:
        r = self.effective_rollout()

        def failed(what: str, error: AutocanaryError) -> None:
            reason = "unavailable" if isinstance(error, PrometheusUnavailable) else "rejected"
            self.metrics.query_errors.labels(r.name, what, reason).inc()
            log.warning("query failed", query=what, error=str(error))

        budget = _Budgeted(self.prometheus, r.interval.total_seconds() * ANALYSIS_BUDGET)
        verdict = interval.evaluate(budget, r, current, now, on_error=failed, pods=pods).verdict
        for result in verdict.checks:
            self.metrics.check_results.labels(r.name, result.name, result.verdict).inc()
            if result.value is not None:
                self.metrics.check_value.labels(r.name, result.name).set(result.value)
        if verdict.judgement is not None:
            for m in verdict.judgement.metrics:
                self.metrics.sequential_evalue.labels(r.name, m.name, "harm").set(m.harm_evalue)
                self.metrics.sequential_evalue.labels(r.name, m.name, "safety").set(m.safety_evalue)
        log.info(
            "analysis",
            verdict=verdict.verdict,
            canary_requests=verdict.canary_requests,
            checks={
                c.name: {"verdict": c.verdict, "value": c.value, "threshold": c.threshold}
                for c in verdict.checks
            },
            reason=verdict.reason,
        )
        return verdict

    # ---- effects ---------------------------------------------------------------------------

    def _superseded(
        self, current: RolloutState, outcome: decision.Decision, obs: decision.Observation
    ) -> tuple[decision.Transition, ...]:
        """Say what became of a release that a new canary revision replaced while promoting."""
        new = outcome.state
        if current.phase != "promoting" or new.revision == current.revision:
            return ()
        if obs.stable_revision == current.revision:
            message = (
                f"promoted {current.canary_version} (revision {current.revision}) to the stable "
                f"Deployment {obs.stable.name}; its promotion was superseded by revision "
                f"{new.revision}, which starts from it"
            )
            return (decision.Transition(Reason.PROMOTED, message, AlertKind.PROMOTED),)
        message = (
            f"the promotion of {current.canary_version} (revision {current.revision}) was "
            f"superseded by revision {new.revision} before the stable took its template"
        )
        return (decision.Transition(Reason.SUPERSEDED, message, None, warning=True),)

    def _services(self) -> _Services:
        """Blue/green's active and preview Services as read (``None``: not there)."""
        bg = self.rollout.blue_green
        if bg is None:
            return _Services()

        def read(name: str) -> ServiceRecord | None:
            try:
                return self.kube.read_service(self.rollout.namespace, name)
            except ResourceNotFound:
                return None  # the decision says so (a release cannot start without it)

        return _Services(read(bg.active_service), read(bg.preview_service))

    def _route(self) -> _Route:
        """A gateway rollout's HTTPRoute as read, and its named rule's weights."""
        gw = self.rollout.gateway
        if gw is None:
            return _Route()
        namespace = gw.namespace or self.rollout.namespace
        try:
            obj = self.kube.read_httproute(namespace, gw.http_route)
        except ResourceNotFound:
            obj = None  # the decision says so (a release cannot start, or pauses, without it)
        return _Route(obj, route_math.read(obj, gw, self.rollout.namespace))

    def _steer(self, desired: decision.Desired, route: _Route, log: Log) -> None:
        """Write the HTTPRoute's weights (and A/B rule) the decision asks for, in one write.

        First of the tick's effects: taking the canary's weight away must not
        wait behind scaling. The route is read back from the write's answer;
        a conflict (someone changed it since it was read) is left to the next
        tick, which reads it again and decides again.
        """
        gw = self.rollout.gateway
        if gw is None or route.obj is None or route.view is None or route.view.problem:
            return
        if desired.canary_weight is None and desired.ab is None:
            return
        weight = (
            route.view.canary_weight if desired.canary_weight is None else desired.canary_weight
        )
        ab = route.view.ab if desired.ab is None else desired.ab
        if (weight, ab) == (route.view.canary_weight, route.view.ab) and (
            route.view.stable_weight == 100 - weight
        ):
            return
        rules = route_math.rules_with(route.obj, gw, weight, ab)
        label = route_math.describe(gw, self.rollout.namespace)
        log.info("setting route weights", route=label, stable=100 - weight, canary=weight, ab=ab)
        try:
            written = self.kube.write_route_rules(route.obj, rules)
        except StateConflict:
            log.info("HTTPRoute changed meanwhile; setting its weights on the next tick")
            return
        back = route_math.read(written, gw, self.rollout.namespace)
        if (back.canary_weight, back.stable_weight, back.ab) != (weight, 100 - weight, ab):
            # An admission webhook or a defaulting rule changed what was written.
            raise InvalidResource(
                f"{label}: wrote stable {100 - weight}, canary {weight}, A/B rule {ab}; read "
                f"back stable {back.stable_weight}, canary {back.canary_weight}, A/B rule "
                f"{back.ab}{': ' + back.problem if back.problem else ''}"
            )

    def _switch(self, desired: decision.Desired, services: _Services, log: Log) -> None:
        """Write the Services' selectors the decision asks for, each in one guarded write.

        First of the tick's effects: a switch back must not wait behind scaling.
        A conflict (the Service changed since it was read) is left to the next
        tick, which reads it again and decides again.
        """
        for role, service, want in (
            ("active", services.active, desired.active_selector),
            ("preview", services.preview, desired.preview_selector),
        ):
            if service is None or want is None or want == service.selector:
                continue
            log.info("switching Service", service=service.name, role=role, selector=want)
            try:
                self.kube.switch_selector(service, want)
            except StateConflict:
                log.info(
                    "Service changed meanwhile; switching on the next tick", service=service.name
                )

    def _actuate(
        self,
        desired: decision.Desired,
        canary: DeploymentRecord,
        stable: DeploymentRecord,
        state: RolloutState,
        log: Log,
    ) -> tuple[DeploymentRecord, DeploymentRecord]:
        r = self.rollout
        if desired.stable_template is not None:
            log.info("replacing the stable pod template", deployment=r.stable)
            stable = self.kube.replace_template(r.namespace, r.stable, desired.stable_template)
        # The stable first: when the canary shrinks (a rollback), capacity never dips.
        wanted = ((stable, desired.stable_replicas), (canary, desired.canary_replicas))
        for record, want in wanted:
            if want is None or want == record.replicas:
                continue
            log.info("scaling", deployment=record.name, replicas=want, was=record.replicas)
            overridden = self._overridden(
                record, state, untouched=state.total if record is stable else 0
            )
            scaled = self.kube.scale(r.namespace, record.name, want)
            if overridden:
                self._note_override(scaled, record, want, state, log)
            if record is stable:
                stable = scaled
            else:
                canary = scaled
        return canary, stable

    def _overridden(self, record: DeploymentRecord, state: RolloutState, *, untouched: int) -> bool:
        """Whether someone else set these replicas during the release (not the daemon).

        The API says who owns spec.replicas (and, except through the scale
        subresource, since when). Before the daemon first scales a Deployment
        in a release, another owner is expected, with the value the release
        started from (``untouched``): that is not an override.
        """
        if state.phase not in state_codec.ACTIVE_PHASES or not record.replicas_manager:
            return False
        if record.replicas_manager == FIELD_MANAGER:
            return False
        set_at, started_at = record.replicas_set_at, state.started_at
        if set_at is not None and started_at is not None and set_at <= started_at:
            return False
        return record.replicas != untouched

    def _note_override(
        self,
        about: DeploymentRecord,
        before: DeploymentRecord,
        want: int,
        state: RolloutState,
        log: Log,
    ) -> None:
        message = (
            f"{before.replicas_manager} set {before.name} to {before.replicas} replicas during "
            f"the release of {state.canary_version}; autocanary owns the scale until the release "
            f"ends and set it back to {want}. Pause the release (autocanary pause) to hold it."
        )
        log.warning(
            "replicas set by someone else reverted", deployment=before.name, message=message
        )
        try:
            self.kube.record_event(about, Reason.REPLICAS_OVERRIDDEN, message, warning=True)
        except AutocanaryError as e:
            log.warning("could not record Event", reason=Reason.REPLICAS_OVERRIDDEN, error=str(e))

    def _export(self, new: RolloutState, obs: decision.Observation | None) -> None:
        r = self.rollout
        self.metrics.set_phase(r.name, r.namespace, new.phase)
        self.metrics.step.labels(r.name).set(
            new.step + 1 if new.phase in state_codec.ACTIVE_PHASES else 0
        )
        if obs is None:
            self.metrics.canary_weight.labels(r.name, r.namespace).set(0.0)
            return
        if obs.route is not None and obs.route.problem is None:
            self.metrics.canary_weight.labels(r.name, r.namespace).set(
                obs.route.canary_percent / 100
            )
            return
        ready = obs.canary.ready + obs.stable.ready
        self.metrics.canary_weight.labels(r.name, r.namespace).set(
            obs.canary.ready / ready if ready else 0.0
        )


def _command(canary: DeploymentRecord) -> str | None:
    return canary.annotations.get(COMMAND_ANNOTATION)


def _consumed_before(canary: DeploymentRecord, stored: StoredState) -> bool:
    """Whether the canary's command was consumed by a tick that died before removing it."""
    command = _command(canary)
    return command is not None and stored.consumed == command_mark(canary, command)


class _KubeCluster:
    """The :class:`~autocanary.rollout.tick.Cluster` of one engine tick, on the Deployments read.

    Keeps what the tick wrote (the Deployments as last returned, the state with
    its notices) for the engine to tell and export afterwards.
    """

    def __init__(
        self,
        engine: RolloutEngine,
        read: tuple[DeploymentRecord, DeploymentRecord, RolloutState | None],
        stored: StoredState,
        services: _Services,
        route: _Route,
        *,
        obs: decision.Observation,
        recovered: tuple[decision.Transition, ...],
        now: datetime,
        log: Log,
    ) -> None:
        self._engine = engine
        #: The Deployments as last returned by the API, and the stable's release record.
        self.canary, self.stable, self.record = read
        #: The state as stored, last read or written (its version guards the next write).
        self.stored = stored
        self._services = services
        self._route = route
        self._obs = obs
        self._recovered = recovered
        self._now = now
        self.log = log
        self.new = RolloutState()
        self.told: tuple[decision.Transition, ...] = ()

    def observe(self) -> decision.Observation:
        """The observation the engine read at the start of the tick."""
        return self._obs

    def commit(self, current: RolloutState, outcome: decision.Decision) -> bool:
        """Write the new state with a notice per transition (guarded), then the stable's record."""
        engine, obs = self._engine, self._obs
        told = [
            *((t, outcome.state) for t in self._recovered),
            *((t, current) for t in engine._superseded(current, outcome, obs)),
            *((t, outcome.state) for t in outcome.transitions),
        ]
        transitions = tuple(t for t, _ in told)
        new = engine._with_notices(current, outcome.state, told, self._now)
        if not self._keep(new, outcome.consume_command, transitions):
            return False
        for transition in transitions:
            self.log.info(
                "transition",
                reason=transition.reason,
                message=transition.message,
                kind=transition.kind,
            )
        structlog.contextvars.bind_contextvars(
            revision=new.revision or obs.canary_revision,
            step=new.step + 1 if new.phase in state_codec.ACTIVE_PHASES else None,
        )
        self.new, self.told = new, transitions
        self.stable, self.record = engine._keep_record(self.stable, self.record, new)
        return True

    def _keep(
        self,
        new: RolloutState,
        consume: bool,
        transitions: tuple[decision.Transition, ...],
    ) -> bool:
        """Write ``new`` if it changed, then tidy the canary; False on a conflicting write.

        An idle rollout that never had a state costs no write at all. An older
        daemon's annotation is moved: the ConfigMap first, the annotation
        removed after, so a crash in between leaves both (the ConfigMap wins).
        A consumed command is marked in the same write and removed after it.
        """
        kube, stored, canary = self._engine.kube, self.stored, self.canary
        command = _command(canary)
        new_json = state_codec.dumps(new)
        was = stored.text if stored.text is not None else state_codec.dumps(RolloutState())
        mark = command_mark(canary, command) if consume and command is not None else None
        if new_json != was or mark is not None or stored.source == "annotation":
            try:
                self.stored = kube.save_state(canary, stored, new_json, consumed=mark)
            except StateConflict:
                return False
            if stored.source == "annotation":
                self.log.info("state moved to its ConfigMap", configmap=self.stored.name)
            _kill_point(transitions, migrated=stored.source == "annotation")
        # The command first: its removal is guarded by the generation read, which
        # removing the old annotation would bump.
        if command is not None and (mark is not None or _consumed_before(canary, stored)):
            kube.consume_command(canary, command)
        moved = self.stored.source == "configmap" and stored.legacy is not None
        if moved and not kube.drop_legacy_state(canary, str(stored.legacy)):
            self.log.info("the old state annotation changed; removed on a later tick")
        labels = canary.raw.get("metadata", {}).get("labels") or {}
        if self.stored.source == "configmap" and labels.get(PHASE_LABEL) != new.phase:
            self.canary = kube.label_phase(canary, new.phase)
        return True

    def apply(self, desired: decision.Desired) -> None:
        """Set the gateway's weights or switch blue/green's Services, then replace the stable's
        template and scale both Deployments, as ``desired`` says."""
        self._engine._steer(desired, self._route, self.log)
        self._engine._switch(desired, self._services, self.log)
        self.canary, self.stable = self._engine._actuate(
            desired, self.canary, self.stable, self.new, self.log
        )


class _PrometheusMetrics:
    """The :class:`~autocanary.rollout.tick.Metrics` of one engine tick: the daemon's analysis."""

    def __init__(self, engine: RolloutEngine, cluster: _KubeCluster) -> None:
        self._engine = engine
        self._cluster = cluster

    def evaluate(self, state: RolloutState, at: datetime) -> thresholds.IntervalVerdict:
        """Query Prometheus for the interval ending at ``at`` and judge it, within the budget."""
        engine, cluster = self._engine, self._cluster
        uses_pods = thresholds.uses_pods(engine.rollout)
        pods = engine._pod_sets(cluster.canary, cluster.stable) if uses_pods else None
        return engine._analyse(state, at, cluster.log, pods)
