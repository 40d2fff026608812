"""One tick's sequence, written once: observe, analyse if due, decide, commit, apply.

The daemon's engine, backtest's replay and the unit tests' driver all run
:func:`run`; they differ only in what stands behind the two ports:

- :class:`Cluster`, what a tick needs from Kubernetes: the rollout's two
  Deployments as an :class:`~autocanary.rollout.decision.Observation`, a place
  to keep the decided state (the daemon's guarded annotation write, which may
  lose to a concurrent writer), and the desired templates and replicas taken;
- :class:`Metrics`, what a tick needs from Prometheus: the verdict of the
  interval ending now, for the release the state describes.

``decide()`` stays pure; everything with effects is behind a port.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from autocanary.analysis.thresholds import IntervalVerdict
from autocanary.config.models import RolloutConfig
from autocanary.rollout import decision, revision
from autocanary.rollout.pods import PodView
from autocanary.rollout.route import RouteView
from autocanary.rollout.state import RolloutState


class Cluster(Protocol):
    """The rollout's Deployments: read them, keep the decided state, make them as desired."""

    def observe(self) -> decision.Observation:
        """Both Deployments (and, while a release progresses, the canary's pods) as now."""
        ...

    def commit(self, current: RolloutState, outcome: decision.Decision) -> bool:
        """Keep ``outcome``'s state (and consume the command if it says so).

        False when the state could not be kept because another writer changed
        it first: the tick then takes no action, and the next one decides again.
        """
        ...

    def apply(self, desired: decision.Desired) -> None:
        """Bring the Deployments to ``desired`` (the stable first: capacity never dips)."""
        ...


class Metrics(Protocol):
    """The analysis of an interval: what Prometheus says about the canary and the stable."""

    def evaluate(self, state: RolloutState, at: datetime) -> IntervalVerdict:
        """The verdict of the interval ending at ``at``, for the release ``state`` describes."""
        ...


@dataclass(frozen=True)
class Tick:
    """What one pass of the sequence saw and decided."""

    obs: decision.Observation
    verdict: IntervalVerdict | None  # None when no analysis was due
    decision: decision.Decision
    committed: bool  # False: the state changed meanwhile; nothing was applied


def run(
    rollout: RolloutConfig,
    current: RolloutState,
    cluster: Cluster,
    metrics: Metrics,
    now: datetime,
) -> Tick:
    """Observe, analyse when due, decide, commit and apply, once."""
    obs = cluster.observe()
    verdict = None
    # A pending command is decided first: a slow Prometheus must not delay an abort.
    if not (obs.command or "").strip() and decision.analysis_due(rollout, current, obs, now):
        verdict = metrics.evaluate(current, now)
    outcome = decision.decide(rollout, current, obs, now, verdict)
    if not cluster.commit(current, outcome):
        return Tick(obs, verdict, outcome, committed=False)
    cluster.apply(outcome.desired)
    return Tick(obs, verdict, outcome, committed=True)


def observation(
    stable: decision.DeploymentView,
    canary: decision.DeploymentView,
    *,
    role_labels: frozenset[str],
    version_label: str,
    command: str | None = None,
    canary_pods: tuple[PodView, ...] = (),
    active_selector: dict[str, str] | None = None,
    preview_selector: dict[str, str] | None = None,
    route: RouteView | None = None,
) -> decision.Observation:
    """The observation of two Deployments: their revisions and versions read off the templates.

    Blue/green adds the selectors of its active and preview Services as read;
    a gateway rollout its HTTPRoute's rule.
    """
    return decision.Observation(
        stable=stable,
        canary=canary,
        stable_revision=revision.revision_of(stable.template, role_labels),
        canary_revision=revision.revision_of(canary.template, role_labels),
        stable_version=revision.version_of(stable.template, version_label),
        canary_version=revision.version_of(canary.template, version_label),
        role_labels=role_labels,
        command=command,
        canary_pods=canary_pods,
        active_selector=active_selector,
        preview_selector=preview_selector,
        route=route,
    )
