"""The rollout state machine: state, observations and the clock in; next state and actions out.

A purely computational function with no side effects, so every path is
unit-tested without I/O. The engine reads the cluster into an
:class:`Observation`, asks :func:`analysis_due` whether to query Prometheus,
calls :func:`decide`, and applies the :class:`Decision`: state first (with
optimistic concurrency), then the desired replica counts and template, then
Events and alerts.

Phases::

    idle ─▶ progressing (per step: waitingReady ─▶ analysing) ─▶ promoting ─▶ succeeded
     │         ▲       │  ▲                                          │
     ▼  resume │ pause,│  │ resume           fail, deadline or abort │
    blocked ───┘ incon-▼  │                                          ▼
                clusive paused ─────────── abort ───────────▶ rollingBack ─▶ rolledBack

``blocked`` is a revision that cannot start (the stable's version, no stable
replicas, unfit Services or HTTPRoute): nothing is scaled for it; promote and
abort end it without touching the stable.

Desired replica counts are re-asserted on every tick of an active phase
(level-triggered): a scale that failed is simply applied again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from autocanary.analysis import judging
from autocanary.analysis.thresholds import IntervalVerdict
from autocanary.analysis.verdict import CheckSummary
from autocanary.config.models import AlertKind, RolloutConfig
from autocanary.config.units import format_duration
from autocanary.rollout import pods as pod_math
from autocanary.rollout import route as route_math
from autocanary.rollout import steps as step_math
from autocanary.rollout.revision import JSON, promoted_template
from autocanary.rollout.state import COMMANDS, Reason, RolloutState, VerdictRecord

#: How soon to look again while waiting on the cluster (pods Ready, rollouts done).
POLL = timedelta(seconds=2)


@dataclass(frozen=True)
class DeploymentView:
    """What the engine read of one Deployment."""

    name: str
    template: JSON
    replicas: int  # spec.replicas
    ready: int  # status.readyReplicas
    available: int  # status.availableReplicas
    updated: int  # status.updatedReplicas
    current: int  # status.replicas: every pod, old ReplicaSets included
    generation: int  # metadata.generation
    observed_generation: int  # status.observedGeneration

    @property
    def observed(self) -> bool:
        """Whether the deployment controller has seen the latest spec (and annotations)."""
        return self.observed_generation >= self.generation


@dataclass(frozen=True)
class Observation:
    """The cluster as read at the start of a tick."""

    stable: DeploymentView
    canary: DeploymentView
    stable_revision: str
    canary_revision: str
    stable_version: str
    canary_version: str
    role_labels: frozenset[str]  # labels the stable keeps at promotion
    command: str | None = None  # the raw command annotation, if any
    canary_pods: tuple[pod_math.PodView, ...] = ()  # read while a release progresses
    # Blue/green only: the selectors of the active and preview Services as read.
    active_selector: dict[str, str] | None = None
    preview_selector: dict[str, str] | None = None
    # Gateway only: the named rule of the HTTPRoute as read.
    route: route_math.RouteView | None = None


@dataclass(frozen=True)
class Desired:
    """What the Deployments should look like; ``None`` leaves a field alone."""

    canary_replicas: int | None = None
    stable_replicas: int | None = None
    stable_template: JSON | None = None
    # Blue/green: whole selectors for the Services, each written in one write.
    active_selector: dict[str, str] | None = None
    preview_selector: dict[str, str] | None = None
    # Gateway: the canary's weight in percent (the stable gets the rest) and whether
    # the A/B rule is there, written together in one write of the HTTPRoute.
    canary_weight: int | None = None
    ab: bool | None = None


@dataclass(frozen=True)
class Transition:
    """Something worth an Event (and, when ``kind`` is routed, an alert)."""

    reason: Reason  # Kubernetes Event reason
    message: str
    kind: AlertKind | None
    warning: bool = False
    checks: tuple[CheckSummary, ...] = ()
    #: Why it happened, in words, where ``message`` goes on to say what follows from it.
    cause: str = ""


@dataclass(frozen=True)
class Decision:
    """The outcome of one tick's decision."""

    state: RolloutState
    desired: Desired
    transitions: tuple[Transition, ...] = ()
    consume_command: bool = False
    requeue_after: timedelta | None = None


# ------------------------------------------------------------------ helpers


@dataclass(frozen=True)
class _Tick:
    """What stays fixed during one decision: the rollout, the observation, the clock."""

    rollout: RolloutConfig
    obs: Observation
    now: datetime


def _pods(rollout: RolloutConfig, state: RolloutState) -> list[int]:
    if rollout.gateway is not None:
        headroom = rollout.gateway.headroom
        return [step_math.weighted_pods(w, state.total, headroom) for w in rollout.weights]
    return step_math.plan(rollout.plan, state.total)


def _stable_for(rollout: RolloutConfig, state: RolloutState, step: int) -> int:
    """Stable replicas beside step ``step``'s canary (``-1``: before the first step)."""
    if step < 0:
        return state.total
    canary = _pods(rollout, state)[step]
    return step_math.stable_pods(state.total, canary, scale_down_stable=rollout.scales_down_stable)


def _canary_ready(view: DeploymentView, want: int, since_generation: int) -> bool:
    # The controller must have seen the release's template (since_generation):
    # before that its counts describe the previous one. Later generations need not
    # be seen: the state annotation bumps the generation with every write (a
    # Deployment's annotations count as spec), and after a scale the counts
    # themselves say whether `want` pods are there.
    # readyReplicas counts every pod: while pods of an earlier canary template
    # remain (a release superseded mid-way), their readiness says nothing about
    # the new ones, so no old pods may be left.
    return (
        view.observed_generation >= since_generation
        and view.ready >= want
        and view.updated >= want
        and view.current <= view.updated
    )


def _stable_runs(obs: Observation, state: RolloutState, revision: str) -> bool:
    """The stable runs template ``revision`` at the whole total, every pod available."""
    s = obs.stable
    return (
        obs.stable_revision == revision
        and s.observed
        and s.replicas == state.total
        and s.updated >= state.total
        and s.available >= state.total
        and s.current == state.total
    )


def _step_label(rollout: RolloutConfig, state: RolloutState) -> str:
    pods = _pods(rollout, state)
    if rollout.blue_green is not None:
        if state.step == 0:
            return f"the preview ({pods[0]} pods on {rollout.blue_green.preview_service})"
        return f"the window after the switch ({rollout.blue_green.active_service} live)"
    if rollout.gateway is not None:
        return (
            f"step {state.step + 1}/{len(pods)} ({rollout.weights[state.step]}% of traffic, "
            f"{pods[state.step]} canary pods)"
        )
    return f"step {state.step + 1}/{len(pods)} ({pods[state.step]} canary pods)"


# ------------------------------------------------------------------ blue/green


def live_window(rollout: RolloutConfig, state: RolloutState) -> bool:
    """Whether a blue/green release is past its switch: users reach the new version.

    The old version then gets no traffic, so an interval can only be judged by
    absolute thresholds: comparisons with it (relative checks, the sequential
    judge) had their say on the preview.
    """
    return rollout.blue_green is not None and state.step >= 1


def stable_unserved(rollout: RolloutConfig, state: RolloutState) -> bool:
    """Whether the stable serves no traffic at the release's current step.

    Blue/green past its switch, a gateway step at 100%, or a canary step that
    took every pod of a stable that scales down: comparisons with the stable
    (relative checks, the sequential judge) have nothing to compare with there,
    and had their say at the steps before, so such an interval is judged by
    absolute thresholds alone.
    """
    if rollout.blue_green is not None:
        return live_window(rollout, state)
    if state.total < 1 or not 0 <= state.step < len(rollout.plan):
        return False
    if rollout.gateway is not None:
        return rollout.weights[state.step] >= 100
    return _stable_for(rollout, state, state.step) == 0


def absolute_only_now(rollout: RolloutConfig, state: RolloutState) -> bool:
    """Whether this step's intervals are judged by the absolute thresholds alone.

    Where the stable serves nobody (:func:`stable_unserved`) and the rollout has
    absolute checks. With none (the config's validation requires one where it
    can tell), the comparisons stay, and find the stable without traffic: the
    interval is inconclusive rather than passed on nothing.
    """
    return stable_unserved(rollout, state) and any(
        check.absolute is not None for check in rollout.analysis.checks
    )


def _selecting(selector: dict[str, str] | None, label: str, version: str) -> dict[str, str] | None:
    """``selector`` (as read) selecting ``version`` by ``label``: only that label changes.

    ``None`` (leave the Service alone) when it was not read.
    """
    return None if selector is None else {**selector, label: version}


def _serves(obs: Observation, label: str, version: str) -> bool:
    """Whether the active Service, as read, selects ``version``."""
    return (obs.active_selector or {}).get(label) == version


def _stable_restored(obs: Observation, state: RolloutState) -> bool:
    """The stable runs its own template again at the whole total, every pod available."""
    return _stable_runs(obs, state, state.stable_revision)


def _stable_complete(obs: Observation, state: RolloutState) -> bool:
    """The stable runs the release's template at the whole total, every pod available."""
    return _stable_runs(obs, state, state.revision)


def _blue_green_desired(rollout: RolloutConfig, state: RolloutState, obs: Observation) -> Desired:
    """The canary's desired state with blue/green's Services on top.

    The active Service selects exactly one version at any moment: the old one
    until the live window, the new one from then on. Whatever would take pods
    of the version it selects away waits until it selects the other version:
    the stable's template changes at promotion only once the switch is read
    back, and on a rollback the canary keeps its pods until the switch back is
    (which in turn waits for the stable to be whole again on its own template).
    """
    desired = _canary_desired(rollout, state, obs)
    label = rollout.version_label
    # Users move to the new version only once all its pods are Ready.
    to_canary = (
        _selecting(obs.active_selector, label, state.canary_version)
        if _canary_ready(obs.canary, state.total, state.canary_generation)
        else None
    )
    if state.phase == "progressing":
        preview = _selecting(obs.preview_selector, label, state.canary_version)
        active = to_canary if live_window(rollout, state) else None
        return dataclasses.replace(desired, active_selector=active, preview_selector=preview)
    if state.phase == "promoting":
        if not _serves(obs, label, state.canary_version):
            # The stable's pods carry the users until the switch is read back.
            return Desired(
                canary_replicas=state.total, stable_replicas=state.total, active_selector=to_canary
            )
        return desired
    if state.phase == "rollingBack" and not _serves(obs, label, state.stable_version):
        # Users are on the new version: it carries them, whole and Ready (scaled up
        # again if a promotion had ended it), until the stable is whole again on its
        # own template; only then does the Service switch back.
        whole = Desired(canary_replicas=state.total, stable_replicas=state.total)
        if not _canary_ready(obs.canary, state.total, state.canary_generation):
            return whole
        if not _stable_restored(obs, state):
            return dataclasses.replace(whole, stable_template=desired.stable_template)
        back = _selecting(obs.active_selector, label, state.stable_version)
        return dataclasses.replace(whole, active_selector=back)
    return desired


# ------------------------------------------------------------------ gateway


def _weight_at(rollout: RolloutConfig, step: int) -> int:
    """The canary's traffic weight at ``step`` (0 before the first)."""
    return rollout.weights[step] if step >= 0 else 0


def _route_fit(obs: Observation) -> bool:
    return obs.route is not None and obs.route.problem is None


def _route_carries_canary(obs: Observation) -> bool:
    """Whether the HTTPRoute, as read, may still send requests to the canary."""
    view = obs.route
    return view is not None and view.problem is None and (view.canary_weight > 0 or view.ab)


def _route_problem(rollout: RolloutConfig, obs: Observation) -> str | None:
    """Why a running release cannot steer its traffic any more: the route gone, or edited.

    autocanary writes only weights adding up to 100 with the canary at 0 or a
    step's weight; anything else was written by someone else.
    """
    assert rollout.gateway is not None
    view = obs.route
    if view is None:
        return "the HTTPRoute could not be read"
    if view.problem is not None:
        return view.problem
    allowed = {0, *rollout.weights, 100}
    if view.stable_weight + view.canary_weight != 100 or view.canary_weight not in allowed:
        return (
            f"the weights of the {route_math.describe(rollout.gateway, rollout.namespace)} were "
            f"changed by someone else (stable {view.stable_weight}, canary "
            f"{view.canary_weight}); autocanary writes stable + canary = 100 with the canary "
            f"at one of {sorted(allowed)}"
        )
    return None


def _gateway_unfit(rollout: RolloutConfig, obs: Observation) -> str | None:
    """Why a gateway release cannot start on this HTTPRoute, if it cannot."""
    assert rollout.gateway is not None
    view = obs.route
    if view is None or view.problem is not None:
        return view.problem if view is not None else "the HTTPRoute could not be read"
    if view.canary_weight != 0 or view.ab:
        return (
            f"the {route_math.describe(rollout.gateway, rollout.namespace)} must send every "
            f"request to the stable Service {rollout.gateway.stable_service} before a release "
            f"starts; it gives the canary weight {view.canary_weight} of "
            f"{view.stable_weight + view.canary_weight}"
            + (" and has autocanary's A/B rule" if view.ab else "")
        )
    return None


def _gateway_desired(rollout: RolloutConfig, state: RolloutState, obs: Observation) -> Desired:
    """The canary's desired replicas with the HTTPRoute's weights on top.

    The canary's weight rises only once the step's pods are Ready (the
    analysing stage); until then it keeps the previous step's. Whatever ends
    the release takes the canary's weight (and the A/B rule) away first, and
    scales the canary to zero only once the route is read back without them.
    """
    assert rollout.gateway is not None
    desired = _canary_desired(rollout, state, obs)
    if state.phase == "progressing":
        ready = state.stage == "analysing"
        weight = _weight_at(rollout, state.step if ready else state.step - 1)
        # Testers reach the canary once its first pods are Ready.
        ab = rollout.gateway.match is not None and (ready or state.step > 0)
        return dataclasses.replace(desired, canary_weight=weight, ab=ab)
    if state.phase == "promoting" and not _stable_complete(obs, state):
        return _gateway_promoting(state, obs, desired)
    ending = state.phase == "rollingBack" or (
        state.phase == "promoting" and _stable_complete(obs, state)
    )
    if not ending:
        return desired
    if not _route_fit(obs):
        # No route to steer (deleted or broken: the release paused on it first).
        return desired
    back = dataclasses.replace(desired, canary_weight=0, ab=False)
    if _route_carries_canary(obs):
        # The canary keeps its pods until the route is read back without it.
        return dataclasses.replace(back, canary_replicas=None)
    return back


def _gateway_promoting(state: RolloutState, obs: Observation, desired: Desired) -> Desired:
    """Before the stable takes the release's template: every request on the whole canary.

    The stable's pods are replaced by a rolling update, which takes some out
    of service; so the canary first runs the whole total, Ready, then carries
    all of the traffic (100), and only then does the stable roll. After the
    last step (100%) both already hold.
    """
    whole = Desired(canary_replicas=state.total, stable_replicas=state.total)
    if not _canary_ready(obs.canary, state.total, state.canary_generation) or not _route_fit(obs):
        return whole
    if obs.route is not None and obs.route.canary_weight != 100:
        return dataclasses.replace(whole, canary_weight=100)
    return dataclasses.replace(desired, canary_replicas=state.total)


def _route_changed(t: _Tick, state: RolloutState, problem: str) -> Decision:
    """Pause a release whose HTTPRoute someone else deleted or edited: never promote on it."""
    message = (
        f"{problem}; the release of {state.canary_version} is paused at "
        f"{_step_label(t.rollout, state)} and will not be promoted: fix the HTTPRoute and "
        "resume, or abort"
    )
    new = dataclasses.replace(state, phase="paused", message=f"paused: {message}")
    return Decision(
        new,
        Desired(),
        (Transition(Reason.ROUTE_CHANGED, message, AlertKind.PAUSED, warning=True),),
    )


def desired_for(rollout: RolloutConfig, state: RolloutState, obs: Observation) -> Desired:
    """The replica counts, stable template, (blue/green) selectors and (gateway) weights."""
    if rollout.blue_green is not None:
        return _blue_green_desired(rollout, state, obs)
    if rollout.gateway is not None:
        return _gateway_desired(rollout, state, obs)
    return _canary_desired(rollout, state, obs)


def _canary_desired(rollout: RolloutConfig, state: RolloutState, obs: Observation) -> Desired:
    if state.phase == "progressing":
        canary = _pods(rollout, state)[state.step]
        stable = _stable_for(rollout, state, state.step)
        if state.stage == "waitingReady":
            # The stable shrinks only once this step's canary pods are Ready, so
            # capacity never drops below the total while the canary starts.
            stable = max(stable, _stable_for(rollout, state, state.step - 1))
        return Desired(canary_replicas=canary, stable_replicas=stable)
    if state.phase == "promoting":
        if _stable_complete(obs, state):
            return Desired(canary_replicas=0, stable_replicas=state.total)
        template = None
        if obs.stable_revision != state.revision:
            template = promoted_template(obs.stable.template, obs.canary.template, obs.role_labels)
        # The canary keeps its pods until the stable has finished rolling out.
        return Desired(stable_replicas=state.total, stable_template=template)
    if state.phase == "rollingBack":
        restore = (
            state.stable_template
            if state.stable_template is not None and obs.stable_revision != state.stable_revision
            else None
        )
        return Desired(canary_replicas=0, stable_replicas=state.total, stable_template=restore)
    if state.phase in ("succeeded", "rolledBack"):
        # A finished release leaves no canary pods behind.
        return Desired(canary_replicas=0)
    return Desired()


def analysis_due(
    rollout: RolloutConfig, state: RolloutState, obs: Observation, now: datetime
) -> bool:
    """Whether this tick should query Prometheus for the current step.

    Only while analysing a step whose canary pods are all Ready, and only once
    a whole interval and a whole window of post-warm-up data exist, then once
    per interval.
    """
    if state.phase != "progressing" or state.stage != "analysing" or state.ready_at is None:
        return False
    if state.step >= len(rollout.plan) or obs.canary_revision != state.revision:
        return False
    if not _canary_ready(obs.canary, _pods(rollout, state)[state.step], state.canary_generation):
        return False
    if rollout.gateway is not None and (
        not _route_fit(obs)
        or obs.route is None
        or obs.route.canary_weight != _weight_at(rollout, state.step)
    ):
        # The step's weight is not (yet) in the route: its traffic is not this step's.
        return False
    first = state.ready_at + rollout.analysis.warmup + max(rollout.interval, rollout.window)
    if now < first:
        return False
    # 90%: a tick that fires a little early must not skip a whole interval.
    return state.last_analysis_at is None or now - state.last_analysis_at >= rollout.interval * 0.9


def next_analysis_at(rollout: RolloutConfig, state: RolloutState) -> datetime | None:
    """When the next analysis is meant to run, if the rollout is analysing.

    A whole interval after the last, so windows do not overlap; the 10% slack
    in :func:`analysis_due` only absorbs timers that fire a little early.
    """
    if state.phase != "progressing" or state.stage != "analysing" or state.ready_at is None:
        return None
    first = state.ready_at + rollout.analysis.warmup + max(rollout.interval, rollout.window)
    if state.last_analysis_at is None:
        return first
    return max(first, state.last_analysis_at + rollout.interval)


# ------------------------------------------------------------------ transitions


def _release_of(obs: Observation, state: RolloutState, **fields: Any) -> RolloutState:
    """A fresh state about the canary's revision as observed; what was rolled back stays known."""
    return RolloutState(
        revision=obs.canary_revision,
        stable_revision=obs.stable_revision,
        canary_version=obs.canary_version,
        stable_version=obs.stable_version,
        rolled_back_revision=state.rolled_back_revision,
        **fields,
    )


def _cannot_start(t: _Tick, state: RolloutState, message: str) -> Decision:
    """A new canary revision that cannot start: blocked, with nothing scaled for it.

    A release it would supersede is rolled back first: that release's steps
    may have scaled the stable down, and only a release under way brings it back.
    A promotion whose template the stable already runs is kept (and told promoted).
    """
    obs = t.obs
    landed = state.phase == "promoting" and obs.stable_revision == state.revision
    if state.phase in ("progressing", "paused", "promoting") and state.total >= 1 and not landed:
        return _roll_back(
            t,
            state,
            f"the new canary revision {obs.canary_revision} cannot start ({message}); "
            f"the release of {state.canary_version} ends first",
        )
    blocked = _release_of(obs, state, phase="blocked", message=f"blocked: {message}")
    told = f"the release of revision {obs.canary_revision} cannot start: {message}"
    return Decision(
        blocked, Desired(), (Transition(Reason.PAUSED, told, AlertKind.PAUSED, warning=True),)
    )


def _start_release(t: _Tick, state: RolloutState, why: str, *, judged: bool = True) -> Decision:
    """Start a release of the canary's revision, or block it, saying why it cannot start.

    ``judged=False`` (a release promoted by command, never analysed) does not
    need the canary's metrics told apart from the stable's by version.
    """
    rollout, obs, now = t.rollout, t.obs, t.now
    # A release superseding another keeps its total: the stable may be scaled
    # down by that release's steps right now.
    superseding = state.phase in ("progressing", "paused", "promoting") and state.total >= 1
    total = state.total if superseding else obs.stable.replicas
    if total < 1:
        return _cannot_start(
            t,
            state,
            f"the stable Deployment {obs.stable.name} has 0 replicas; scale it up, then resume",
        )
    if judged and obs.canary_version == obs.stable_version:
        # Metrics are told apart by version: with one version on both sides every
        # query would measure the mix, and a comparison would compare it with itself.
        return _cannot_start(
            t,
            state,
            f"canary and stable both run version {obs.canary_version!r}, so their metrics "
            f"cannot be told apart; give the canary's pods a distinct "
            f"{rollout.version_label!r} label (or image tag)",
        )
    if rollout.blue_green is not None and not superseding:
        unfit = _blue_green_unfit(rollout, obs)
        if unfit is not None:
            return _cannot_start(t, state, unfit)
    if rollout.gateway is not None:
        # A superseded release's weights are its own: the new one lowers them first.
        unfit = _gateway_unfit(rollout, obs) if not superseding else _route_problem(rollout, obs)
        if unfit is not None:
            return _cannot_start(t, state, unfit)
    new = _release_of(
        obs,
        state,
        phase="progressing",
        stable_template=obs.stable.template,
        canary_generation=obs.canary.generation,
        total=total,
        step=0,
        stage="waitingReady",
        step_started_at=now,
        started_at=now,
    )
    new = dataclasses.replace(
        new, message=f"release {obs.canary_version} started: {_step_label(rollout, new)}"
    )
    message = (
        f"{why}: canary {obs.canary_version} (revision {obs.canary_revision}) against stable "
        f"{obs.stable_version}; total {total} replicas, steps {_pods(rollout, new)}"
    )
    if rollout.gateway is not None:
        message = (
            f"{why}: canary {obs.canary_version} (revision {obs.canary_revision}) against "
            f"stable {obs.stable_version} through the "
            f"{route_math.describe(rollout.gateway, rollout.namespace)}; the stable keeps its "
            f"{total} replicas, canary weights {rollout.weights}% with "
            f"{_pods(rollout, new)} canary pods"
        )
    if rollout.blue_green is not None:
        message = (
            f"{why}: {obs.canary_version} (revision {obs.canary_revision}) comes up whole "
            f"({total} pods) beside {obs.stable_version}, judged on the preview Service "
            f"{rollout.blue_green.preview_service}"
        )
    return Decision(
        new,
        desired_for(rollout, new, obs),
        (Transition(Reason.RELEASE_DETECTED, message, AlertKind.RELEASE_DETECTED),),
        requeue_after=POLL,
    )


def _blue_green_unfit(rollout: RolloutConfig, obs: Observation) -> str | None:
    """Why a blue/green release cannot start on these Services, if it cannot."""
    assert rollout.blue_green is not None
    label, active = rollout.version_label, rollout.blue_green.active_service
    if obs.preview_selector is None:
        return f"the preview Service {rollout.blue_green.preview_service} was not found"
    if obs.active_selector is None:
        return f"the active Service {active} was not found"
    if obs.active_selector.get(label) != obs.stable_version:
        # Switching by the version label is what keeps the Service on one version.
        return (
            f"the active Service {active} must select the stable's version by the "
            f"{label!r} label ({label}: {obs.stable_version}) for its selector to be switched; "
            f"it selects {obs.active_selector or 'every pod'}"
        )
    return None


def _roll_back(
    t: _Tick,
    state: RolloutState,
    message: str,
    extra: tuple[Transition, ...] = (),
    checks: tuple[CheckSummary, ...] = (),
) -> Decision:
    rollout, obs, now = t.rollout, t.obs, t.now
    new = dataclasses.replace(
        state,
        phase="rollingBack",
        rolled_back_revision=state.revision,
        finished_at=now,
        message=f"rolled back: {message}",
    )
    told = message
    if rollout.blue_green is not None and not _serves(
        obs, rollout.version_label, state.stable_version
    ):
        told = (
            f"{message}; the active Service {rollout.blue_green.active_service} switches back "
            f"to {state.stable_version}"
        )
    transition = Transition(
        Reason.ROLLED_BACK, told, AlertKind.ROLLED_BACK, warning=True, checks=checks
    )
    return Decision(new, desired_for(rollout, new, obs), (*extra, transition), requeue_after=POLL)


def _promote(t: _Tick, state: RolloutState, why: str) -> Decision:
    rollout, obs = t.rollout, t.obs
    new = dataclasses.replace(
        state,
        phase="promoting",
        step_started_at=None,
        message=f"promoting {state.canary_version}: {why}",
    )
    return Decision(
        new,
        desired_for(rollout, new, obs),
        (
            Transition(
                Reason.PROMOTING,
                f"{why}; the stable Deployment gets the canary's template",
                None,
                cause=why,
            ),
        ),
        requeue_after=POLL,
    )


def _pause(state: RolloutState, message: str) -> Decision:
    new = dataclasses.replace(state, phase="paused", message=f"paused: {message}")
    return Decision(
        new, Desired(), (Transition(Reason.PAUSED, message, AlertKind.PAUSED, warning=True),)
    )


#: Characters of an ignored command quoted back in its Event and log line.
_COMMAND_SHOWN = 64


def _ignore_command(decision: Decision, command: str, why: str) -> Decision:
    # The annotation is free text: a 200,000-character value must not become a
    # 200,000-character Event and log line.
    shown = (
        repr(command)
        if len(command) <= _COMMAND_SHOWN
        else f"{command[:_COMMAND_SHOWN]!r}... ({len(command)} characters)"
    )
    note = Transition(Reason.COMMAND_IGNORED, f"command {shown} ignored: {why}", None, warning=True)
    return dataclasses.replace(
        decision, transitions=(*decision.transitions, note), consume_command=True
    )


# ------------------------------------------------------------------ the decision


def _fit_steps(rollout: RolloutConfig, state: RolloutState, now: datetime) -> RolloutState:
    """A state whose step still exists after a config reload removed steps.

    The release continues at the new last step, waiting for its pods again,
    rather than failing every tick on a step that is gone.
    """
    last = len(rollout.plan) - 1
    if state.phase not in ("progressing", "paused") or state.step <= last:
        return state
    return dataclasses.replace(
        state,
        step=last,
        stage="waitingReady",
        step_started_at=now,
        ready_at=None,
        last_analysis_at=None,
        step_passes=0,
        message=f"the config now has {last + 1} step(s); continuing at step {last + 1}",
    )


def decide(
    rollout: RolloutConfig,
    state: RolloutState,
    obs: Observation,
    now: datetime,
    verdict: IntervalVerdict | None = None,
) -> Decision:
    """Decide one tick; ``verdict`` is the interval's analysis when :func:`analysis_due` asked."""
    state = _fit_steps(rollout, state, now)
    command = (obs.command or "").strip() or None
    if command is not None and command not in COMMANDS:
        decision = _decide_phase(_Tick(rollout, obs, now), state, verdict, None)
        return _ignore_command(
            decision, command, f"unknown command; use one of {', '.join(COMMANDS)}"
        )
    decision = _decide_phase(_Tick(rollout, obs, now), state, verdict, command)
    if command is not None and not decision.consume_command:
        decision = dataclasses.replace(decision, consume_command=True)
    return decision


def _decide_phase(
    t: _Tick, state: RolloutState, verdict: IntervalVerdict | None, command: str | None
) -> Decision:
    obs = t.obs
    active = state.phase in ("progressing", "paused", "promoting")
    if active and obs.canary_revision != state.revision:
        if obs.canary_revision == obs.stable_revision:
            return _roll_back(t, state, "the canary template was reverted to the stable's")
        if t.rollout.blue_green is not None and (
            state.phase == "promoting" or live_window(t.rollout, state)
        ):
            # Users are on the canary's pods, which the new template replaces: back to
            # the stable first; the new revision starts from there.
            return _roll_back(
                t, state, "a new canary revision arrived after the switch; it starts next"
            )
        return _start_release(t, state, "release superseded by a new canary revision")

    if state.phase == "blocked":
        return _decide_blocked(t, state, command)
    if state.phase in ("idle", "succeeded", "rolledBack"):
        return _decide_settled(t, state, command)
    if state.phase == "progressing":
        return _decide_progressing(t, state, verdict, command)
    if state.phase == "paused":
        return _decide_paused(t, state, command)
    if state.phase == "promoting":
        return _decide_promoting(t, state, command)
    return _decide_rolling_back(t, state, command)


def _decide_settled(t: _Tick, state: RolloutState, command: str | None) -> Decision:
    rollout, obs = t.rollout, t.obs
    stay = Decision(state, desired_for(rollout, state, obs))
    if obs.canary_revision == obs.stable_revision:
        if command is not None:
            return _ignore_command(stay, command, "no release in progress")
        return stay
    if obs.canary_revision == state.rolled_back_revision:
        if command == "retry":
            return _start_release(t, state, "retry requested")
        if command is not None:
            return _ignore_command(stay, command, "this revision was rolled back; use retry")
        return stay
    if state.phase == "succeeded" and obs.canary_revision == state.revision:
        # Promoted, but someone changed the stable since: not a new release.
        if command is not None:
            return _ignore_command(stay, command, "this revision was already promoted")
        return stay
    decision = _start_release(t, state, "new canary revision")
    if command in ("promote", "abort") and decision.state.phase == "blocked":
        then = _decide_blocked(t, decision.state, command)
        return dataclasses.replace(then, transitions=(*decision.transitions, *then.transitions))
    if command in ("promote", "abort") and decision.state.phase == "progressing":
        # The release did start: its ReleaseDetected comes before what the command did.
        then = (
            _promote(t, decision.state, "promotion requested by command")
            if command == "promote"
            else _roll_back(t, decision.state, "aborted by command")
        )
        return dataclasses.replace(then, transitions=(*decision.transitions, *then.transitions))
    if command is not None and command != "retry":
        return _ignore_command(
            decision, command, "applied to the new release only for promote/abort"
        )
    return decision


def _decide_blocked(t: _Tick, state: RolloutState, command: str | None) -> Decision:
    """A revision that could not start: nothing was scaled for it, so nothing is undone."""
    obs = t.obs
    if obs.canary_revision == obs.stable_revision:
        idle = dataclasses.replace(
            state, phase="idle", message="the canary runs the stable's template again"
        )
        back = Decision(idle, Desired())
        return back if command is None else _ignore_command(back, command, "no release")
    if obs.canary_revision != state.revision:
        # A new revision: decided as from idle (what was rolled back stays known).
        return _decide_settled(t, dataclasses.replace(state, phase="idle", message=""), command)
    if command == "abort":
        message = "aborted by command before the release started; the stable was not touched"
        ended = dataclasses.replace(
            state,
            phase="rolledBack",
            rolled_back_revision=state.revision,
            finished_at=t.now,
            message=f"rolled back: {message}",
        )
        return Decision(
            ended,
            desired_for(t.rollout, ended, obs),
            (Transition(Reason.ROLLED_BACK, message, AlertKind.ROLLED_BACK, warning=True),),
        )
    if command == "promote":
        started = _start_release(t, state, "promotion requested by command", judged=False)
        if started.state.phase != "progressing":
            return _ignore_command(started, command, "the release cannot start")
        then = _promote(t, started.state, "promotion requested by command")
        return dataclasses.replace(then, transitions=(*started.transitions, *then.transitions))
    if command == "resume":
        return _start_release(t, state, "resumed")
    stay = Decision(state, Desired())
    if command is not None:
        return _ignore_command(
            stay, command, "the release has not started; fix what blocks it, then resume"
        )
    return stay


def _deadline_rollback(t: _Tick, state: RolloutState, what: str) -> Decision:
    message = f"{what} within progressDeadline {format_duration(t.rollout.progress_deadline)}"
    exceeded = Transition(
        Reason.PROGRESS_DEADLINE_EXCEEDED,
        message,
        AlertKind.PROGRESS_DEADLINE_EXCEEDED,
        warning=True,
    )
    return _roll_back(t, state, message, extra=(exceeded,))


def _decide_progressing(
    t: _Tick, state: RolloutState, verdict: IntervalVerdict | None, command: str | None
) -> Decision:
    rollout, obs, now = t.rollout, t.obs, t.now
    if command == "abort":
        return _roll_back(t, state, "aborted by command")
    if command == "promote":
        return _promote(t, state, "promotion requested by command")
    if command == "pause":
        return _pause(state, f"paused by command at {_step_label(rollout, state)}")
    if rollout.gateway is not None:
        problem = _route_problem(rollout, obs)
        if problem is not None:
            paused = _route_changed(t, state, problem)
            if command is not None:
                return _ignore_command(paused, command, "the HTTPRoute changed")
            return paused
    # Pods of this release only: a superseded release's pods are on their way out.
    failing = pod_math.failure(
        [p for p in obs.canary_pods if p.version == state.canary_version], rollout.max_restarts
    )
    if failing is not None:
        message = f"{failing}, at {_step_label(rollout, state)}"
        pod_failed = Transition(Reason.CANARY_POD_FAILED, message, None, warning=True)
        decision = _roll_back(t, state, message, extra=(pod_failed,))
        if command is not None:
            return _ignore_command(decision, command, "the canary's pods are failing")
        return decision

    if state.stage == "analysing":
        decision = _analysing(t, state, verdict)
    else:
        want = _pods(rollout, state)[state.step]
        if _canary_ready(obs.canary, want, state.canary_generation):
            new = dataclasses.replace(
                state,
                stage="analysing",
                ready_at=now,
                not_ready_since=None,
                not_ready_seconds=0.0,
                last_analysis_at=None,
                step_passes=0,
                message=f"analysing {_step_label(rollout, state)}",
            )
            decision = Decision(new, desired_for(rollout, new, obs), requeue_after=POLL)
        elif obs.canary.replicas < want:
            # The step's pods were never asked for (the daemon stopped between writing
            # the step and scaling): the canary cannot be late for them, so the
            # deadline starts now, as they are asked for.
            new = dataclasses.replace(state, step_started_at=now)
            decision = Decision(new, desired_for(rollout, new, obs), requeue_after=POLL)
        elif (
            state.step_started_at is not None
            and now - state.step_started_at > rollout.progress_deadline
        ):
            return _deadline_rollback(
                t,
                state,
                f"canary pods not Ready at {_step_label(rollout, state)} "
                f"({obs.canary.ready}/{want} ready)",
            )
        else:
            decision = Decision(state, desired_for(rollout, state, obs), requeue_after=POLL)
    if command is not None:
        return _ignore_command(decision, command, "the release is progressing")
    return decision


def _record(state: RolloutState, verdict: IntervalVerdict, now: datetime) -> RolloutState:
    record = VerdictRecord(
        at=verdict.at,
        step=state.step,
        verdict=verdict.verdict,
        reason=verdict.reason,
        checks={
            c.name: {"verdict": c.verdict, "value": c.value, "threshold": c.threshold}
            for c in verdict.checks
        },
    )
    return dataclasses.replace(state, last_analysis_at=now, verdicts=state.with_verdict(record))


def _judge(t: _Tick, state: RolloutState, verdict: IntervalVerdict) -> Decision | RolloutState:
    """Count one interval's verdict; a Decision when it ends the step (rollback or pause)."""
    analysis = t.rollout.analysis
    checks = tuple(c.summary() for c in verdict.checks)
    first_poll = state.last_analysis_at is None
    state = _record(state, verdict, t.now)
    if verdict.judge_state is not None:
        state = dataclasses.replace(state, judge=verdict.judge_state)
    elif analysis.sequential is not None and first_poll and not absolute_only_now(t.rollout, state):
        # A step's first poll sets the judge's baseline (the counters after the
        # warm-up). It could not read them: stay "before the first poll" so the
        # next one sets it, rather than count the warm-up as evidence.
        state = dataclasses.replace(state, last_analysis_at=None)
    where = _step_label(t.rollout, state)
    if verdict.verdict == "fail" and judging.harm_proven(verdict.judgement):
        # Proven harm needs no second opinion: failureLimit is for noisy thresholds.
        state = dataclasses.replace(state, failures=state.failures + 1, inconclusive=0)
        failed = Transition(
            Reason.ANALYSIS_FAILED,
            f"analysis failed at {where}: {verdict.reason}",
            AlertKind.ANALYSIS_FAILED,
            warning=True,
            checks=checks,
        )
        return _roll_back(t, state, verdict.reason, extra=(failed,), checks=checks)
    if verdict.verdict == "pass":
        return dataclasses.replace(state, step_passes=state.step_passes + 1, inconclusive=0)
    if verdict.verdict == "fail":
        if _same_evidence(state, verdict):
            # A window longer than the interval (four scrapes of a 30s scrape against a
            # 30s interval) shares most of its requests with the last failed one: one
            # unlucky minute failed every interval that looked at it, and failureLimit
            # tolerated nothing. Told, but counted once.
            repeated = Transition(
                Reason.ANALYSIS_FAILED,
                f"analysis failed at {where}: {verdict.reason} (not counted again: its "
                "window overlaps the last failed interval's)",
                AlertKind.ANALYSIS_FAILED,
                warning=True,
                checks=checks,
            )
            return Decision(dataclasses.replace(state, inconclusive=0), Desired(), (repeated,))
        state = dataclasses.replace(
            state, failures=state.failures + 1, inconclusive=0, last_failure_at=verdict.at
        )
        failed = Transition(
            Reason.ANALYSIS_FAILED,
            f"analysis failed at {where}: {verdict.reason}",
            AlertKind.ANALYSIS_FAILED,
            warning=True,
            checks=checks,
        )
        if state.failures > analysis.failure_limit:
            reason = (
                f"{verdict.reason} ({state.failures} failed interval(s), "
                f"failureLimit {analysis.failure_limit})"
            )
            return _roll_back(t, state, reason, extra=(failed,), checks=checks)
        return Decision(state, Desired(), (failed,))
    state = dataclasses.replace(state, inconclusive=state.inconclusive + 1)
    unsure = Transition(
        Reason.ANALYSIS_INCONCLUSIVE,
        f"analysis inconclusive at {where} ({state.inconclusive} in a row): {verdict.reason}",
        AlertKind.INCONCLUSIVE,
        warning=True,
        checks=checks,
    )
    if state.inconclusive <= analysis.inconclusive_limit:
        return Decision(state, Desired(), (unsure,))
    reason = (
        f"{state.inconclusive} inconclusive intervals in a row "
        f"(inconclusiveLimit {analysis.inconclusive_limit}): {verdict.reason}"
    )
    if analysis.inconclusive_policy == "rollback":
        return _roll_back(t, state, reason, extra=(unsure,), checks=checks)
    paused = _pause(state, reason)
    with_checks = tuple(dataclasses.replace(p, checks=checks) for p in paused.transitions)
    return dataclasses.replace(paused, transitions=(unsure, *with_checks))


def _same_evidence(state: RolloutState, verdict: IntervalVerdict) -> bool:
    """Whether a failed interval's window reaches back into the last counted failure's."""
    last = state.last_failure_at
    return last is not None and verdict.window is not None and verdict.at - verdict.window < last


def _analysing(t: _Tick, state: RolloutState, verdict: IntervalVerdict | None) -> Decision:
    rollout, obs, now = t.rollout, t.obs, t.now
    want = _pods(rollout, state)[state.step]
    if not _canary_ready(obs.canary, want, state.canary_generation):
        since = state.not_ready_since or now
        # Every spell of the step counts: pods flapping Ready/not Ready do not reset it.
        not_ready = timedelta(seconds=state.not_ready_seconds) + (now - since)
        if not_ready > rollout.progress_deadline:
            return _deadline_rollback(
                t,
                state,
                f"canary pods not Ready for {format_duration(not_ready)} in all at "
                f"{_step_label(rollout, state)} ({obs.canary.ready}/{want} ready now)",
            )
        new = dataclasses.replace(state, not_ready_since=since)
        return Decision(new, desired_for(rollout, new, obs), requeue_after=POLL)

    if state.not_ready_since is not None:
        spell = (now - state.not_ready_since).total_seconds()
        state = dataclasses.replace(
            state, not_ready_since=None, not_ready_seconds=state.not_ready_seconds + spell
        )
    transitions: tuple[Transition, ...] = ()
    if verdict is not None:
        judged = _judge(t, state, verdict)
        if isinstance(judged, Decision) and judged.state.phase != "progressing":
            return judged
        if isinstance(judged, Decision):
            state, transitions = judged.state, judged.transitions
        else:
            state = judged

    step = rollout.plan[state.step]
    held = state.ready_at is not None and now - state.ready_at >= step.hold
    last = state.verdicts[-1] if state.verdicts else None
    passed = last is not None and last.verdict == "pass" and last.step == state.step
    sequential = rollout.analysis.sequential
    proven = sequential is None or judging.all_safe(state.judge)
    # The judge compares with the stable: once the stable has no pods left (the
    # last step, or a 100% step of scaleDownStable) no evidence can come, so
    # going there needs safety already proven.
    final = state.step + 1 >= len(rollout.plan)
    # Blue/green: after the switch the old version has no traffic to compare with.
    comparable_next = (
        not final
        and _stable_for(rollout, state, state.step + 1) > 0
        and rollout.blue_green is None
        # Gateway: at 100% the stable keeps its pods but gets no requests to compare.
        and (rollout.gateway is None or rollout.weights[state.step + 1] < 100)
    )
    if held and passed and state.step_passes >= 1 and (proven or comparable_next):
        return _advance(t, state, transitions)
    if (
        sequential is not None
        and not proven
        and state.started_at is not None
        and now - state.started_at > sequential.max_duration
    ):
        return _undecided_at_deadline(t, state, transitions)

    if verdict is not None:
        state = dataclasses.replace(
            state,
            message=f"analysing {_step_label(rollout, state)}: last interval {verdict.verdict}",
        )
    hold_ends = state.ready_at + step.hold if state.ready_at is not None else None
    wakes = [w for w in (next_analysis_at(rollout, state), hold_ends) if w is not None and w > now]
    return Decision(
        state,
        desired_for(rollout, state, obs),
        transitions,
        requeue_after=min(wakes) - now if wakes else None,
    )


def _undecided_at_deadline(
    t: _Tick, state: RolloutState, transitions: tuple[Transition, ...]
) -> Decision:
    """The sequential judge proved neither harm nor safety within maxDuration: apply the policy."""
    analysis = t.rollout.analysis
    assert analysis.sequential is not None
    last = state.verdicts[-1].reason if state.verdicts else "no evidence"
    reason = (
        f"the sequential judge proved neither harm nor safety within maxDuration "
        f"{format_duration(analysis.sequential.max_duration)}: {last}"
    )
    if analysis.inconclusive_policy == "rollback":
        decision = _roll_back(t, state, reason)
    else:
        decision = _pause(state, reason)
    return dataclasses.replace(decision, transitions=(*transitions, *decision.transitions))


def _advance(t: _Tick, state: RolloutState, transitions: tuple[Transition, ...]) -> Decision:
    """The step held long enough with passing analysis: next step, or promotion after the last."""
    rollout = t.rollout
    pods = _pods(rollout, state)
    if state.step + 1 >= len(pods):
        why = (
            f"the window after the switch held {format_duration(rollout.plan[-1].hold)}"
            if rollout.blue_green is not None
            else f"all {len(pods)} steps passed their analysis"
        )
        promoted = _promote(t, state, why)
        return dataclasses.replace(promoted, transitions=(*transitions, *promoted.transitions))
    hold = format_duration(rollout.plan[state.step].hold)
    new = dataclasses.replace(
        state,
        step=state.step + 1,
        stage="waitingReady",
        step_started_at=t.now,
        ready_at=None,
        last_analysis_at=None,
        step_passes=0,
    )
    new = dataclasses.replace(new, message=f"waiting for {_step_label(rollout, new)}")
    if rollout.blue_green is not None:
        switched = Transition(
            Reason.SWITCHED,
            f"the preview held {hold} with {state.step_passes} passing interval(s): the active "
            f"Service {rollout.blue_green.active_service} switches from {state.stable_version} "
            f"to {state.canary_version}; {state.stable_version} stays up for "
            f"{format_duration(rollout.blue_green.window)}",
            AlertKind.STEP_ADVANCED,
        )
        return Decision(
            new, desired_for(rollout, new, t.obs), (*transitions, switched), requeue_after=POLL
        )
    advanced = Transition(
        Reason.STEP_ADVANCED,
        f"advanced to {_step_label(rollout, new)} after step {state.step + 1} held {hold} "
        f"with {state.step_passes} passing interval(s)",
        AlertKind.STEP_ADVANCED,
    )
    return Decision(
        new, desired_for(rollout, new, t.obs), (*transitions, advanced), requeue_after=POLL
    )


def _decide_paused(t: _Tick, state: RolloutState, command: str | None) -> Decision:
    rollout, obs, now = t.rollout, t.obs, t.now
    if command == "abort":
        return _roll_back(t, state, "aborted by command")
    if command == "promote":
        return _promote(t, state, "promotion requested by command")
    if command == "resume":
        new = dataclasses.replace(
            state,
            phase="progressing",
            stage="waitingReady",
            step_started_at=now,
            ready_at=None,
            not_ready_since=None,
            not_ready_seconds=0.0,
            last_analysis_at=None,
            step_passes=0,
            inconclusive=0,
            started_at=_max_duration_clock(t, state),
        )
        label = _step_label(rollout, new)
        new = dataclasses.replace(new, message=f"resumed at {label}")
        return Decision(
            new,
            desired_for(rollout, new, obs),
            (Transition(Reason.RESUMED, f"resumed at {label}", AlertKind.RESUMED),),
            requeue_after=POLL,
        )
    stay = Decision(state, Desired())
    if command is not None:
        return _ignore_command(stay, command, "the release is paused; use resume, promote or abort")
    return stay


def _max_duration_clock(t: _Tick, state: RolloutState) -> datetime | None:
    """Where the sequential judge's maxDuration counts from after a resume.

    Once maxDuration has run out (the pause it causes), a resume starts a fresh
    one: otherwise the release would pause again before any new evidence. The
    evidence itself is kept, and looking longer does not weaken its guarantees.
    """
    sequential = t.rollout.analysis.sequential
    if (
        sequential is None
        or state.started_at is None
        or t.now - state.started_at <= sequential.max_duration
    ):
        return state.started_at
    return t.now


def _decide_promoting(t: _Tick, state: RolloutState, command: str | None) -> Decision:
    rollout, obs, now = t.rollout, t.obs, t.now
    if command == "abort":
        return _roll_back(t, state, "aborted by command during promotion")
    if state.step_started_at is None:
        # step_started_at marks when the promotion began, for its deadline.
        state = dataclasses.replace(state, step_started_at=now)
    started = state.step_started_at or now
    if rollout.gateway is not None:
        problem = _route_problem(rollout, obs)
        if problem is not None:
            paused = _route_changed(t, state, problem)
            if command is not None:
                return _ignore_command(paused, command, "the HTTPRoute changed")
            return paused
    if (
        _stable_complete(obs, state)
        and obs.canary.replicas == 0
        and (rollout.gateway is None or not _route_carries_canary(obs))
    ):
        new = dataclasses.replace(
            state,
            phase="succeeded",
            finished_at=now,
            message=f"promoted {state.canary_version} (revision {state.revision})",
        )
        promoted = Transition(
            Reason.PROMOTED,
            f"promoted {state.canary_version} (revision {state.revision}) to the stable "
            f"Deployment {obs.stable.name} with {state.total} replicas; canary scaled to 0",
            AlertKind.PROMOTED,
        )
        decision = Decision(new, desired_for(rollout, new, obs), (promoted,))
    elif not _stable_complete(obs, state) and now - started > rollout.progress_deadline:
        return _deadline_rollback(
            t,
            state,
            f"the stable Deployment did not finish rolling out revision {state.revision} "
            f"({obs.stable.available}/{state.total} available)",
        )
    else:
        decision = Decision(state, desired_for(rollout, state, obs), requeue_after=POLL)
    if command is not None:
        return _ignore_command(
            decision, command, "the release is being promoted; only abort applies"
        )
    return decision


def _decide_rolling_back(t: _Tick, state: RolloutState, command: str | None) -> Decision:
    rollout, obs = t.rollout, t.obs
    desired = desired_for(rollout, state, obs)
    done = (
        obs.canary.replicas == 0
        and obs.stable.replicas == state.total
        and desired.stable_template is None
        and (
            rollout.blue_green is None or _serves(obs, rollout.version_label, state.stable_version)
        )
        and (rollout.gateway is None or not _route_carries_canary(obs))
    )
    if done:
        new = dataclasses.replace(state, phase="rolledBack")
        decision = Decision(new, desired_for(rollout, new, obs))
    else:
        decision = Decision(state, desired, requeue_after=POLL)
    if command is not None:
        return _ignore_command(decision, command, "the release is being rolled back")
    return decision
