"""Judging one interval at a past time: the one seam where another judge plugs in.

A replay asks an :class:`IntervalEvaluator` for the verdict of the interval
ending at ``at``, exactly where the daemon's engine would query Prometheus
now. :class:`ThresholdEvaluator` is the daemon's threshold analysis: the same
rendered queries (:func:`autocanary.analysis.plan`), evaluated at ``at``, and
the same :func:`autocanary.analysis.judge_interval`. A sequential judge
implements the same protocol, keeping its evidence between calls (one
evaluator serves one replay, and the decision keeps ``IntervalVerdict.judge_state``
in ``RolloutState.judge``), and is passed to :func:`autocanary.backtest.run.backtest`
as an :data:`EvaluatorFactory`.

:func:`default_evaluator` picks what the daemon runs for the rollout: the
threshold analysis, plus :class:`SequentialEvaluator` when
``analysis.sequential`` is set.

A query Prometheus rejects is an inconclusive interval, as in the daemon; an
unreachable Prometheus aborts the backtest (:class:`PrometheusUnavailable`),
since a verdict from history that could not be read would be made up.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from autocanary import analysis, sequential_analysis
from autocanary.config import RolloutConfig
from autocanary.errors import QueryError
from autocanary.judge import CounterSnapshot
from autocanary.state import RolloutState

Sample = tuple[dict[str, str], float]


class QuerySource(Protocol):
    """Instant queries at a past time: :class:`autocanary.prometheus.PrometheusClient`."""

    def query_value(self, promql: str, at: datetime | None = None) -> float | None:
        """One number, or None for an empty result; QueryError/PrometheusUnavailable otherwise."""
        ...

    def query_vector(self, promql: str, at: datetime | None = None) -> list[Sample]:
        """Every series' labels and value (the sequential judge's raw counters)."""
        ...


@dataclass(frozen=True)
class Silence:
    """A query that never gave a number over a replay."""

    what: str  # e.g. "check error-rate (canary)"
    query: str
    error: str | None  # the last error, when Prometheus rejected it


class IntervalEvaluator(Protocol):
    """The verdict of the interval ending at ``at``, for the release ``state`` describes."""

    def evaluate(self, state: RolloutState, at: datetime) -> analysis.IntervalVerdict:
        """Judge one interval (called once per analysis the daemon would run, in time order)."""
        ...

    def silences(self) -> list[Silence]:
        """Queries that never answered with a number across the calls so far."""
        ...


EvaluatorFactory = Callable[[RolloutConfig, QuerySource], IntervalEvaluator]


def plan_queries(plan: analysis.AnalysisPlan) -> dict[str, str]:
    """Every distinct query of ``plan`` in the engine's order, with what it is for."""
    named: dict[str, str] = {plan.canary_requests_query: "request count (canary)"}
    if plan.stable_requests_query is not None:
        named.setdefault(plan.stable_requests_query, "request count (stable)")
    for planned in plan.checks:
        named.setdefault(planned.canary_query, f"check {planned.check.name} (canary)")
        if planned.stable_query is not None:
            named.setdefault(planned.stable_query, f"check {planned.check.name} (stable)")
    return named


class ThresholdEvaluator:
    """The daemon's threshold analysis, with the queries evaluated at past times."""

    def __init__(self, rollout: RolloutConfig, source: QuerySource) -> None:
        """Judge intervals of ``rollout`` with values from ``source``."""
        self._rollout = rollout
        self._source = source
        self._plans: dict[tuple[str, str], analysis.AnalysisPlan] = {}
        self._seen: dict[str, tuple[str, bool, str | None]] = {}  # query -> (what, answered, err)

    def evaluate(self, state: RolloutState, at: datetime) -> analysis.IntervalVerdict:
        """Run the interval's queries at ``at`` and judge them as the daemon does."""
        key = (state.canary_version, state.stable_version)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = analysis.plan(self._rollout, *key)
        outcomes: dict[str, analysis.QueryOutcome] = {}
        for query, what in plan_queries(plan).items():
            try:
                outcome = analysis.QueryOutcome(value=self._source.query_value(query, at))
            except QueryError as e:
                outcome = analysis.QueryOutcome(error=str(e))
            outcomes[query] = outcome
            answered = outcome.value is not None and not math.isnan(outcome.value)
            _, before, _ = self._seen.get(query, (what, False, None))
            self._seen[query] = (what, before or answered, outcome.error)
        return analysis.judge_interval(self._rollout.analysis, plan, outcomes, at)

    def silences(self) -> list[Silence]:
        """Queries with no number at any interval so far (each with its last error)."""
        return [
            Silence(what, query, error)
            for query, (what, answered, error) in self._seen.items()
            if not answered
        ]


class CachingSource:
    """Remembers each (query, time) answer, so variants sharing queries ask Prometheus once."""

    def __init__(self, source: QuerySource) -> None:
        """Wrap ``source``."""
        self._source = source
        self._answers: dict[tuple[str, datetime | None], float | QueryError | None] = {}
        self._vectors: dict[tuple[str, datetime | None], list[Sample] | QueryError] = {}
        self.queries = 0  # queries actually sent

    def query_vector(self, promql: str, at: datetime | None = None) -> list[Sample]:
        """The cached samples, or ``source``'s (a QueryError is cached and raised again)."""
        key = (promql, at)
        if key not in self._vectors:
            self.queries += 1
            try:
                self._vectors[key] = self._source.query_vector(promql, at)
            except QueryError as e:
                self._vectors[key] = e
        answer = self._vectors[key]
        if isinstance(answer, QueryError):
            raise answer
        return list(answer)

    def query_value(self, promql: str, at: datetime | None = None) -> float | None:
        """The cached answer, or ``source``'s (a QueryError is cached and raised again)."""
        key = (promql, at)
        if key not in self._answers:
            self.queries += 1
            try:
                self._answers[key] = self._source.query_value(promql, at)
            except QueryError as e:
                self._answers[key] = e
        answer = self._answers[key]
        if isinstance(answer, QueryError):
            raise answer
        return answer


class SequentialEvaluator:
    """The threshold analysis plus the sequential judge, combined as the daemon's engine does.

    Raw counters of both versions are read at the interval's end and, at a
    step's first analysis, at the end of its warm-up (the judge's baseline);
    the evidence travels in ``RolloutState.judge`` from one interval to the next.
    """

    def __init__(self, rollout: RolloutConfig, source: QuerySource) -> None:
        """Judge intervals of ``rollout`` (which must enable ``analysis.sequential``)."""
        if rollout.analysis.sequential is None:
            raise ValueError(f"rollout {rollout.name!r} does not enable analysis.sequential")
        self._rollout = rollout
        self._sequential = rollout.analysis.sequential
        self._source = source
        self._thresholds = ThresholdEvaluator(rollout, source)

    def _counters(
        self, state: RolloutState, at: datetime
    ) -> tuple[CounterSnapshot, CounterSnapshot]:
        """(canary, stable) raw counters at ``at``."""

        def read(version: str) -> CounterSnapshot:
            queries = sequential_analysis.counter_queries(
                self._rollout, version, state.canary_version, state.stable_version
            )
            samples = [self._source.query_vector(q, at) for q in queries.all()]
            return sequential_analysis.snapshot(*samples)

        return read(state.canary_version), read(state.stable_version)

    def evaluate(self, state: RolloutState, at: datetime) -> analysis.IntervalVerdict:
        """The threshold verdict, with the judge's poll at ``at`` added."""
        verdict = self._thresholds.evaluate(state, at)
        try:
            baseline = None
            if state.last_analysis_at is None and state.ready_at is not None:
                # A step's first poll: start (or move) the evidence after its warm-up.
                warmed = state.ready_at + self._rollout.analysis.warmup
                baseline = self._counters(state, warmed)
            evidence, judgement = sequential_analysis.judge_interval(
                self._sequential, state.judge, baseline, self._counters(state, at)
            )
        except (QueryError, ValueError) as e:
            # ValueError: counters that are not raw integers (see judge.counts).
            return sequential_analysis.unavailable(verdict, str(e))
        return sequential_analysis.combine(verdict, judgement, evidence)

    def silences(self) -> list[Silence]:
        """The threshold queries that never answered (the counters are checked beforehand)."""
        return self._thresholds.silences()


def default_evaluator(rollout: RolloutConfig, source: QuerySource) -> IntervalEvaluator:
    """What the daemon runs for ``rollout``: thresholds, and the sequential judge if enabled."""
    if rollout.analysis.sequential is not None:
        return SequentialEvaluator(rollout, source)
    return ThresholdEvaluator(rollout, source)
