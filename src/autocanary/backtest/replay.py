"""Replaying one release: the daemon's own schedule and decisions, on a simulated cluster.

Each tick is the engine's own sequence (:func:`autocanary.rollout.tick.run`)
with the simulated cluster as its :class:`~autocanary.rollout.tick.Cluster`
and the evaluator as its :class:`~autocanary.rollout.tick.Metrics`: the
evaluator judges a due interval, ``decide()`` decides, the simulated cluster
takes the desired replicas. Ticks come when the
daemon's would: every ``interval``, sooner when a decision asks to be woken
(a hold ending), and, since the simulated cluster settles at once, a tick that
only waits on the cluster (:data:`autocanary.rollout.decision.POLL`) happens at the
same instant. The release is noticed at the window's start; the replay stops at
the decision (rolled back, paused, promoted) or at the window's end.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

from autocanary.analysis.thresholds import IntervalVerdict
from autocanary.backtest.errors import BacktestError
from autocanary.backtest.evaluate import IntervalEvaluator
from autocanary.backtest.report import (
    CheckPoint,
    DecisionKind,
    Event,
    Outcome,
    Release,
    Replay,
    TimelineEntry,
    Variant,
)
from autocanary.backtest.simulation import SimulatedCluster
from autocanary.config.models import CheckConfig, RolloutConfig
from autocanary.rollout import decision, tick
from autocanary.rollout import steps as step_math
from autocanary.rollout.state import Reason, RolloutState

#: Ticks one instant may take while the simulated cluster settles; more means a bug.
_MAX_TICKS_AT_ONCE = 20
_FINAL: dict[Reason, DecisionKind] = {
    Reason.PROMOTED: "promoted",
    Reason.ROLLED_BACK: "rolledBack",
    Reason.PAUSED: "paused",
}


def bounds(check: CheckConfig, stable_value: float | None) -> tuple[float | None, float | None]:
    """The (upper, lower) limits the canary value had to respect, as numbers for a plot."""
    upper, lower = check.max, check.min
    rel = check.relative
    if rel is not None and stable_value is not None:
        if rel.direction == "higher-is-worse":
            limit = stable_value * (1 + rel.tolerance) + rel.margin
            upper = limit if upper is None else min(upper, limit)
        else:
            limit = stable_value * (1 - rel.tolerance) - rel.margin
            lower = limit if lower is None else max(lower, limit)
    return upper, lower


def check_points(rollout: RolloutConfig, verdict: IntervalVerdict) -> tuple[CheckPoint, ...]:
    """The checks of one interval verdict with the bounds each had to respect."""
    configs = {c.name: c for c in rollout.analysis.checks}
    points = []
    sequential = rollout.analysis.sequential
    for result in verdict.checks:
        config = configs.get(result.name)
        if config is not None:
            upper, lower = bounds(config, result.stable_value)
        elif sequential is not None:  # the judge's odds ratios: harmless up to 1 + tolerance
            upper, lower = 1 + sequential.tolerance, None
        else:
            upper, lower = None, None
        points.append(
            CheckPoint(
                name=result.name,
                verdict=result.verdict,
                value=result.value,
                stable_value=result.stable_value,
                threshold=result.threshold,
                upper=upper,
                lower=lower,
                reason=result.reason,
            )
        )
    return tuple(points)


def _entry(
    rollout: RolloutConfig,
    basis: RolloutState,
    now: datetime,
    verdict: IntervalVerdict | None,
    transitions: tuple[decision.Transition, ...],
) -> TimelineEntry:
    pods = step_math.plan(rollout.plan, basis.total) if basis.total >= 1 else []
    return TimelineEntry(
        at=now,
        step=basis.step + 1,
        steps=len(rollout.plan),
        canary_pods=pods[basis.step] if pods else 0,
        verdict=verdict.verdict if verdict is not None else None,
        reason=verdict.reason if verdict is not None else "",
        canary_requests=verdict.canary_requests if verdict is not None else None,
        checks=check_points(rollout, verdict) if verdict is not None else (),
        events=tuple(Event(t.reason, t.message) for t in transitions),
    )


def _append(timeline: list[TimelineEntry], entry: TimelineEntry) -> None:
    """Add ``entry``; a tick without analysis at the same instant joins the previous entry."""
    last = timeline[-1] if timeline else None
    if last is not None and entry.verdict is None and entry.at == last.at:
        timeline[-1] = dataclasses.replace(last, events=(*last.events, *entry.events))
    else:
        timeline.append(entry)


def _next_tick(rollout: RolloutConfig, now: datetime, requeue: timedelta | None) -> datetime:
    if requeue == decision.POLL:
        return now  # waiting on the cluster, which has settled already
    if requeue is not None and requeue < rollout.interval:
        return now + max(requeue, timedelta(0))
    return now + rollout.interval


def replay(
    rollout: RolloutConfig,
    release: Release,
    variant: Variant,
    evaluator: IntervalEvaluator,
    *,
    replicas: int = 10,
) -> Replay:
    """What the daemon would have done with ``release`` under ``rollout``, tick by tick."""
    cluster = SimulatedCluster(rollout, release, replicas)
    state = RolloutState()
    timeline: list[TimelineEntry] = []
    now = release.start
    at_once = 0
    promoting_why = ""
    while now <= release.end:
        done = tick.run(rollout, state, cluster, evaluator, now)
        verdict, outcome = done.verdict, done.decision
        basis = state if state.phase == "progressing" else outcome.state
        if verdict is not None or outcome.transitions:
            _append(timeline, _entry(rollout, basis, now, verdict, outcome.transitions))
        for transition in outcome.transitions:
            if transition.reason is Reason.PROMOTING:
                promoting_why = transition.cause
            final = _FINAL.get(transition.reason)
            if final is not None:
                reason = promoting_why if final == "promoted" else transition.message
                result = Outcome(final, now, basis.step + 1, reason)
                return Replay(release, variant, tuple(timeline), result)
        state = outcome.state
        following = _next_tick(rollout, now, outcome.requeue_after)
        at_once = at_once + 1 if following == now else 0
        if at_once > _MAX_TICKS_AT_ONCE:
            raise BacktestError(
                f"the simulated cluster did not settle at {now.isoformat()} "
                f"(phase {state.phase}, {state.message!r}); this is a bug in backtest"
            )
        now = following
    where = (
        f"at step {state.step + 1}/{len(rollout.plan)}"
        if state.phase == "progressing"
        else f"in phase {state.phase}"
    )
    reason = f"the window ended at {release.end.isoformat()} with the release {where}"
    if state.message:
        reason += f" ({state.message})"
    undecided = Outcome("undecided", None, state.step + 1, reason)
    return Replay(release, variant, tuple(timeline), undecided)
