"""One tick of one rollout: read the cluster, decide, act, tell.

``RolloutEngine.tick()`` is level-triggered and keeps nothing in memory
between ticks: the state comes from the canary's annotation each time. Order
of effects, so a crash at any point is repaired by the next tick:

1. write the new state (guarded by resourceVersion; a conflict aborts the tick),
2. bring the Deployments to the desired template and replica counts (stable
   first, so capacity never dips while the canary shrinks),
3. record Events and send alerts.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog

from autocanary import analysis, decision, interval, revision
from autocanary import state as state_codec
from autocanary.alert import Alert
from autocanary.config import RolloutConfig
from autocanary.errors import (
    AutocanaryError,
    KubernetesForbidden,
    PrometheusUnavailable,
    QueryError,
    StateConflict,
    StateCorrupt,
)
from autocanary.kube import DeploymentRecord, KubeClient
from autocanary.metrics import DaemonMetrics
from autocanary.notify import Notifier
from autocanary.pods import PodView
from autocanary.prometheus import PrometheusClient
from autocanary.state import COMMAND_ANNOTATION, STATE_ANNOTATION, RolloutState
from autocanary.units import format_duration

Clock = Callable[[], datetime]

#: While the scrape interval of a rollout's series is unknown (no series yet,
#: Prometheus down), ask again this often.
SCRAPE_INTERVAL_RETRY_SECONDS = 60.0


def utcnow() -> datetime:
    """The current time, timezone-aware."""
    return datetime.now(UTC)


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
    ) -> None:
        """Bind the adapters a tick uses; nothing is read until :meth:`tick`."""
        self.rollout = rollout
        self.kube = kube
        self.prometheus = prometheus
        self.notifier = notifier
        self.metrics = metrics
        self.clock = clock
        self._log = structlog.get_logger("autocanary.engine").bind(
            rollout=rollout.name, namespace=rollout.namespace
        )
        #: revision and step of the rollout as last read, for the caller's log lines
        #: about a tick that failed (every line of a rollout carries them).
        self.log_context: dict[str, object] = {"revision": None, "step": None}
        self._scrape_interval: timedelta | None = None
        self._scrape_asked_at: float | None = None
        # Series exist from the start at 0, so the first rollback after a restart is an
        # increase that alert rules see, not a series appearing at 1.
        metrics.rollbacks.labels(rollout.name, rollout.namespace)
        metrics.promotions.labels(rollout.name, rollout.namespace)

    def scrape_interval(self) -> timedelta | None:
        """How often Prometheus scrapes the rollout's series, once known (asked once a minute).

        When first known, logs the window the analysis uses, and warns when a
        configured ``analysis.window`` is too short for it.
        """
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
        series = analysis.requests_series(r)
        try:
            found = self.prometheus.scrape_interval(series)
        except (QueryError, PrometheusUnavailable) as e:
            self._log.warning("cannot read the scrape interval", series=series, error=str(e))
            return None
        if found is None:
            self._log.info("no series yet to read the scrape interval from", series=series)
            return None
        self._scrape_interval = found
        window = r.analysis.window or analysis.default_window(r.interval, found)
        self._log.info(
            "analysis window",
            scrape_interval=format_duration(found),
            window=format_duration(window),
            configured=r.analysis.window is not None,
        )
        problem = analysis.window_problem(r, found)
        if problem is not None:
            self._log.warning("analysis window too short", problem=problem)
        return found

    def effective_rollout(self) -> RolloutConfig:
        """The rollout with ``analysis.window`` filled in from the scrape interval when unset."""
        r = self.rollout
        scrape = self.scrape_interval()
        if r.analysis.window is not None:
            return r
        window = analysis.default_window(r.interval, scrape)
        return r.model_copy(update={"analysis": r.analysis.model_copy(update={"window": window})})

    def observe(
        self,
    ) -> tuple[DeploymentRecord, DeploymentRecord, decision.Observation, RolloutState]:
        """Read both Deployments and the persisted state."""
        r = self.rollout
        canary = self.kube.read_deployment(r.namespace, r.canary_name)
        stable = self.kube.read_deployment(r.namespace, r.stable)
        roles = revision.role_labels(r.role_labels, stable.selector, canary.selector)
        obs = decision.Observation(
            stable=_view(stable),
            canary=_view(canary),
            stable_revision=revision.revision_of(stable.template, roles),
            canary_revision=revision.revision_of(canary.template, roles),
            stable_version=revision.version_of(stable.template, r.version_label),
            canary_version=revision.version_of(canary.template, r.version_label),
            role_labels=frozenset(roles),
            command=canary.annotations.get(COMMAND_ANNOTATION),
        )
        raw_state = canary.annotations.get(STATE_ANNOTATION)
        try:
            current = state_codec.loads(raw_state) if raw_state else RolloutState()
        except StateCorrupt as e:
            where = f"{r.namespace}/{r.canary_name}"
            raise StateCorrupt(
                f"rollout {r.name}: the {STATE_ANNOTATION} annotation on Deployment {where} "
                f"cannot be read ({e}). Nothing is done until it is fixed or removed; removing "
                f"it starts the rollout over from idle with the Deployments as they are: "
                f"kubectl annotate deployment -n {r.namespace} {r.canary_name} {STATE_ANNOTATION}-"
            ) from e
        if current.phase == "progressing":
            # The kubelet says a crash loop or a pull error long before a deadline would.
            try:
                found = self.kube.list_pods(r.namespace, canary.selector)
            except KubernetesForbidden as e:
                # Without the pods the release still goes on; only the deadline catches a
                # crash loop then. Said on every tick, so the missing grant gets noticed.
                self._log.warning("cannot read the canary's pods", error=str(e))
                found = []
            obs = dataclasses.replace(
                obs, canary_pods=tuple(PodView.from_json(p, r.version_label) for p in found)
            )
        return canary, stable, obs, current

    def tick(self) -> TickResult:
        """Read, decide, act and tell, once. Raises autocanary errors for the caller to count."""
        started = time.monotonic()
        r = self.effective_rollout()
        canary, stable, obs, current = self.observe()
        self.log_context = {
            "revision": current.revision or obs.canary_revision,
            "step": current.step + 1 if current.phase in state_codec.ACTIVE_PHASES else None,
        }
        log = self._log.bind(**self.log_context)
        now = self.clock()
        verdict = None
        if decision.analysis_due(r, current, obs, now):
            pods = self._pod_sets(canary, stable) if analysis.uses_pods(r) else None
            verdict = self._analyse(current, now, log, pods)
        outcome = decision.decide(r, current, obs, now, verdict)
        new = outcome.state

        new_json = state_codec.dumps(new)
        if new_json != canary.annotations.get(STATE_ANNOTATION) or outcome.consume_command:
            try:
                canary = self.kube.write_state(
                    canary, new_json, consume_command=outcome.consume_command
                )
            except StateConflict:
                log.info("state changed meanwhile; deciding again on the next tick")
                return TickResult(current.phase, timedelta(seconds=1), (), current)

        self.log_context = {
            "revision": new.revision or obs.canary_revision,
            "step": new.step + 1 if new.phase in state_codec.ACTIVE_PHASES else None,
        }
        log = log.bind(**self.log_context)
        self._actuate(outcome.desired, canary, stable, log)
        for transition in outcome.transitions:
            self._tell(transition, new, canary, log)
        self._export(new, obs)
        elapsed = time.monotonic() - started
        self.metrics.tick_duration.labels(r.name).observe(elapsed)
        log.info(
            "tick",
            phase=new.phase,
            stage=new.stage if new.phase == "progressing" else None,
            canary_replicas=obs.canary.replicas,
            stable_replicas=obs.stable.replicas,
            verdict=verdict.verdict if verdict else None,
            transitions=[t.reason for t in outcome.transitions] or None,
            message=new.message,
            duration_ms=round(elapsed * 1000, 1),
        )
        return TickResult(new.phase, outcome.requeue_after, outcome.transitions, new)

    # ---- analysis --------------------------------------------------------------------------

    def _pod_sets(self, canary: DeploymentRecord, stable: DeploymentRecord) -> analysis.PodSets:
        """Both Deployments' pods now, those being deleted too (they served in the window)."""

        def side(record: DeploymentRecord) -> analysis.Pods:
            pods = [
                PodView.from_json(p, self.rollout.version_label)
                for p in self.kube.list_pods(self.rollout.namespace, record.selector)
            ]
            hashes = {p.labels.get("pod-template-hash", "") for p in pods} - {""}
            return analysis.Pods(tuple(sorted(p.name for p in pods)), tuple(sorted(hashes)))

        return analysis.PodSets(canary=side(canary), stable=side(stable))

    def _analyse(
        self,
        current: RolloutState,
        now: datetime,
        log: structlog.typing.FilteringBoundLogger,
        pods: analysis.PodSets | None,
    ) -> analysis.IntervalVerdict:
        r = self.effective_rollout()

        def failed(what: str, error: AutocanaryError) -> None:
            reason = "unavailable" if isinstance(error, PrometheusUnavailable) else "rejected"
            self.metrics.query_errors.labels(r.name, what, reason).inc()
            log.warning("query failed", query=what, error=str(error))

        verdict = interval.evaluate(
            self.prometheus, r, current, now, on_error=failed, pods=pods
        ).verdict
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

    def _actuate(
        self,
        desired: decision.Desired,
        canary: DeploymentRecord,
        stable: DeploymentRecord,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        r = self.rollout
        if desired.stable_template is not None:
            log.info("replacing the stable pod template", deployment=r.stable)
            stable = self.kube.replace_template(r.namespace, r.stable, desired.stable_template)
        # The stable first: when the canary shrinks (a rollback), capacity never dips.
        for record, want in ((stable, desired.stable_replicas), (canary, desired.canary_replicas)):
            if want is not None and want != record.replicas:
                log.info("scaling", deployment=record.name, replicas=want, was=record.replicas)
                self.kube.scale(r.namespace, record.name, want)

    def _tell(
        self,
        transition: decision.Transition,
        new: RolloutState,
        canary: DeploymentRecord,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        r = self.rollout
        log.info(
            "transition",
            reason=transition.reason,
            message=transition.message,
            kind=transition.kind,
        )
        if transition.reason == "RolledBack":
            self.metrics.rollbacks.labels(r.name, r.namespace).inc()
        elif transition.reason == "Promoted":
            self.metrics.promotions.labels(r.name, r.namespace).inc()
        try:
            self.kube.record_event(
                canary, transition.reason, transition.message, warning=transition.warning
            )
        except Exception as e:  # noqa: BLE001 -- an Event that cannot be written must not stop the alert
            log.warning("could not record Event", reason=transition.reason, error=str(e))
        if transition.kind is None:
            return
        self.notifier.notify(
            Alert(
                kind=transition.kind,
                reason=transition.reason,
                rollout=r.name,
                namespace=r.namespace,
                revision=new.revision,
                canary_version=new.canary_version,
                stable_version=new.stable_version,
                step=new.step + 1 if new.total else None,
                total_steps=len(r.steps),
                message=transition.message,
                at=self.clock(),
                checks=transition.checks,
            ),
            r.alerts,
        )

    def _export(self, new: RolloutState, obs: decision.Observation) -> None:
        r = self.rollout
        self.metrics.set_phase(r.name, r.namespace, new.phase)
        self.metrics.step.labels(r.name).set(
            new.step + 1 if new.phase in state_codec.ACTIVE_PHASES else 0
        )
        ready = obs.canary.ready + obs.stable.ready
        self.metrics.canary_weight.labels(r.name, r.namespace).set(
            obs.canary.ready / ready if ready else 0.0
        )
