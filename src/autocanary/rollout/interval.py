"""One analysis interval, from queries to verdict: shared by the daemon and ``backtest``.

The daemon evaluates at "now" against live Prometheus; ``backtest`` at past
instants against history. Both go through :func:`evaluate`, so a replay
judges exactly as the daemon would: the same rendered queries, the same
threshold judge, the same sequential judge with its per-step warm-up baseline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from autocanary.analysis import judging, thresholds
from autocanary.config.models import RolloutConfig
from autocanary.errors import AutocanaryError, PrometheusUnavailable, QueryError
from autocanary.judge import CounterSnapshot
from autocanary.promql import Sample
from autocanary.rollout import decision
from autocanary.rollout.state import RolloutState

#: Called with (what the query is for, the error) for each query that failed.
ErrorHook = Callable[[str, AutocanaryError], None]


class QuerySource(Protocol):
    """Instant queries, now or at a past time (the Prometheus adapter's ``PrometheusClient``)."""

    def query_value(self, promql: str, at: datetime | None = None) -> float | None:
        """One number, or None for an empty result; QueryError/PrometheusUnavailable otherwise."""
        ...

    def query_vector(self, promql: str, at: datetime | None = None) -> list[Sample]:
        """Every series' labels and value (the sequential judge's raw counters)."""
        ...


@dataclass(frozen=True)
class Evaluation:
    """An interval's verdict and what each query gave, keyed by PromQL with its purpose."""

    verdict: thresholds.IntervalVerdict
    outcomes: dict[str, tuple[str, thresholds.QueryOutcome]]


def plan_queries(plan: thresholds.AnalysisPlan) -> dict[str, str]:
    """Every distinct query of ``plan``, in a fixed order, with what it is for."""
    named: dict[str, str] = {plan.canary_requests_query: "request count (canary)"}
    if plan.stable_requests_query is not None:
        named.setdefault(plan.stable_requests_query, "request count (stable)")
    for planned in plan.checks:
        named.setdefault(planned.canary_query, f"check {planned.check.name} (canary)")
        if planned.stable_query is not None:
            named.setdefault(planned.stable_query, f"check {planned.check.name} (stable)")
    return named


def read_counters(
    source: QuerySource,
    rollout: RolloutConfig,
    state: RolloutState,
    at: datetime,
    pods: thresholds.PodSets | None = None,
) -> tuple[CounterSnapshot, CounterSnapshot]:
    """(canary, stable) raw counters at ``at``, for the sequential judge.

    One query per version, both evaluated at the same instant ``at``.
    """
    pods = pods or thresholds.PodSets()
    snapshots = []
    for version, side in ((state.canary_version, pods.canary), (state.stable_version, pods.stable)):
        queries = judging.counter_queries(
            rollout, version, state.canary_version, state.stable_version, side
        )
        snapshots.append(judging.snapshot(source.query_vector(queries.joined(), at)))
    return snapshots[0], snapshots[1]


def evaluate(
    source: QuerySource,
    rollout: RolloutConfig,
    state: RolloutState,
    at: datetime,
    *,
    tolerated: tuple[type[AutocanaryError], ...] = (QueryError, PrometheusUnavailable),
    on_error: ErrorHook | None = None,
    pods: thresholds.PodSets | None = None,
) -> Evaluation:
    """Judge the interval ending at ``at`` for the release ``state`` describes.

    Errors of the ``tolerated`` types make their query's outcome (and so the
    interval) inconclusive; others propagate (``backtest`` stops on an
    unreachable Prometheus rather than make verdicts up). ``pods`` are both
    sides' pods now, for sources that tie series to pods.
    """
    if decision.absolute_only_now(rollout, state):
        # The stable serves nobody at this step (blue/green after its switch, a step at
        # 100%): only absolute thresholds can judge; comparisons had their say before.
        rollout = thresholds.absolute_only(rollout)
    since = state.last_analysis_at
    if since is None and state.ready_at is not None:
        since = state.ready_at + rollout.analysis.warmup
    window = thresholds.lookback(rollout, since, at)
    plan = thresholds.plan(rollout, state.canary_version, state.stable_version, window, pods)
    outcomes: dict[str, tuple[str, thresholds.QueryOutcome]] = {}
    for query, what in plan_queries(plan).items():
        try:
            outcome = thresholds.QueryOutcome(value=source.query_value(query, at))
        except tolerated as e:
            outcome = thresholds.QueryOutcome(error=str(e))
            if on_error is not None:
                on_error(what, e)
        outcomes[query] = (what, outcome)
    verdict = thresholds.judge_interval(
        rollout.analysis, plan, {q: o for q, (_, o) in outcomes.items()}, at
    )
    verdict = dataclasses.replace(verdict, window=window)
    if rollout.analysis.sequential is not None:
        verdict = _sequential(
            source, rollout, state, at, verdict, tolerated=tolerated, on_error=on_error, pods=pods
        )
    return Evaluation(verdict, outcomes)


def _sequential(
    source: QuerySource,
    rollout: RolloutConfig,
    state: RolloutState,
    at: datetime,
    verdict: thresholds.IntervalVerdict,
    *,
    tolerated: tuple[type[AutocanaryError], ...],
    on_error: ErrorHook | None,
    pods: thresholds.PodSets | None,
) -> thresholds.IntervalVerdict:
    """Add the sequential judge's poll at ``at`` to the interval's verdict.

    The warm-up baseline is read with today's pods: those are the pods whose
    counters the judge follows (a pod that came later starts from zero).
    """
    assert rollout.analysis.sequential is not None
    try:
        baseline = None
        if state.last_analysis_at is None and state.ready_at is not None:
            # A step's first poll: start (or move) the evidence after its warm-up.
            warmed = state.ready_at + rollout.analysis.warmup
            baseline = read_counters(source, rollout, state, warmed, pods)
        latest = read_counters(source, rollout, state, at, pods)
        evidence, judgement = judging.judge_interval(
            rollout.analysis.sequential, state.judge, baseline, latest
        )
    except tolerated as e:
        if on_error is not None:
            on_error("sequential judge counters", e)
        return judging.unavailable(verdict, str(e))
    except ValueError as e:
        # Counters that are not raw integers (see judge.counts): unusable, not fatal.
        if on_error is not None:
            on_error("sequential judge counters", QueryError(str(e)))
        return judging.unavailable(verdict, str(e))
    return judging.combine(verdict, judgement, evidence)
