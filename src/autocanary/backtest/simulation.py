"""A simulated cluster for replays: two Deployments whose pods are Ready the moment they exist.

History says how the versions behaved, not how fast their pods started; a
replay therefore assumes the best case for the schedule: every replica count
the decision asks for is there and Ready before the next look, and a promoted
stable finishes rolling out at once. Only the analysis can hold a release back.
"""

from __future__ import annotations

from autocanary.backtest.report import Release
from autocanary.config.models import RolloutConfig
from autocanary.rollout import tick
from autocanary.rollout.decision import Decision, DeploymentView, Desired, Observation
from autocanary.rollout.revision import JSON
from autocanary.rollout.route import RouteView
from autocanary.rollout.state import RolloutState


def _template(rollout: RolloutConfig, version: str, role: str) -> JSON:
    labels = {"app": rollout.stable, rollout.version_label: version}
    labels.update(dict.fromkeys(rollout.role_labels, role))
    return {
        "metadata": {"labels": labels},
        "spec": {"containers": [{"name": rollout.stable, "image": f"{rollout.stable}:{version}"}]},
    }


def _view(name: str, template: JSON, replicas: int) -> DeploymentView:
    return DeploymentView(
        name=name,
        template=template,
        replicas=replicas,
        ready=replicas,
        available=replicas,
        updated=replicas,
        current=replicas,
        generation=1,
        observed_generation=1,
    )


class SimulatedCluster:
    """The stable at ``replicas`` running the stable version; the canary template set to the
    release's version at 0 replicas, i.e. a release waiting to be noticed.

    A :class:`~autocanary.rollout.tick.Cluster` for the replay's ticks.
    """

    def __init__(self, rollout: RolloutConfig, release: Release, replicas: int) -> None:
        """Lay out both Deployments for ``release``; ``replicas`` sizes percentage steps."""
        self._rollout = rollout
        self._roles = frozenset(rollout.role_labels)
        self.stable_template = _template(rollout, release.stable_version, "stable")
        self.canary_template = _template(rollout, release.canary_version, "canary")
        self.stable_replicas = replicas
        self.canary_replicas = 0
        # Blue/green's Services, both selecting the stable's version before the release.
        self.active_selector: dict[str, str] | None = None
        self.preview_selector: dict[str, str] | None = None
        if rollout.blue_green is not None:
            before = {"app": rollout.stable, rollout.version_label: release.stable_version}
            self.active_selector, self.preview_selector = dict(before), dict(before)
        # A gateway's HTTPRoute, sending every request to the stable before the release.
        self.route = RouteView(stable_weight=100) if rollout.gateway is not None else None

    def observe(self) -> Observation:
        """Both Deployments as the engine would read them: settled, every pod Ready."""
        r = self._rollout
        return tick.observation(
            _view(r.stable, self.stable_template, self.stable_replicas),
            _view(r.canary_name, self.canary_template, self.canary_replicas),
            role_labels=self._roles,
            version_label=r.version_label,
            active_selector=self.active_selector,
            preview_selector=self.preview_selector,
            route=self.route,
        )

    def commit(self, current: RolloutState, outcome: Decision) -> bool:
        """Nothing to keep: the replay holds the state; no one else writes it."""
        return True

    def apply(self, desired: Desired) -> None:
        """Take the desired template and replica counts; they are settled at once."""
        if desired.stable_template is not None:
            self.stable_template = desired.stable_template
        if desired.stable_replicas is not None:
            self.stable_replicas = desired.stable_replicas
        if desired.canary_replicas is not None:
            self.canary_replicas = desired.canary_replicas
        if desired.active_selector is not None:
            self.active_selector = desired.active_selector
        if desired.preview_selector is not None:
            self.preview_selector = desired.preview_selector
        if self.route is not None and (desired.canary_weight, desired.ab) != (None, None):
            weight = (
                self.route.canary_weight if desired.canary_weight is None else desired.canary_weight
            )
            ab = self.route.ab if desired.ab is None else desired.ab
            self.route = RouteView(stable_weight=100 - weight, canary_weight=weight, ab=ab)
