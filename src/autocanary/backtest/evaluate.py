"""Judging one interval at a past time: the one seam where another judge plugs in.

A replay asks an :class:`IntervalEvaluator` for the verdict of the interval
ending at ``at``, exactly where the daemon's engine would query Prometheus
now. :class:`DaemonEvaluator` is the daemon's own analysis step
(:func:`autocanary.rollout.interval.evaluate`: the same rendered queries, the same
threshold judge and, when ``thresholds.sequential`` is set, the same sequential
judge with its evidence carried in ``RolloutState.judge``), evaluated at ``at``.
Another judge implements the same protocol and is passed to
:func:`autocanary.backtest.run.backtest` as an :data:`EvaluatorFactory`.

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

from autocanary.analysis import thresholds
from autocanary.config.models import RolloutConfig
from autocanary.errors import QueryError
from autocanary.promql import Sample
from autocanary.rollout import interval
from autocanary.rollout.interval import QuerySource
from autocanary.rollout.state import RolloutState


@dataclass(frozen=True)
class Silence:
    """A query that never gave a number over a replay."""

    what: str  # e.g. "check error-rate (canary)"
    query: str
    error: str | None  # the last error, when Prometheus rejected it


class IntervalEvaluator(Protocol):
    """The verdict of the interval ending at ``at``, for the release ``state`` describes."""

    def evaluate(self, state: RolloutState, at: datetime) -> thresholds.IntervalVerdict:
        """Judge one interval (called once per analysis the daemon would run, in time order)."""
        ...

    def silences(self) -> list[Silence]:
        """Queries that never answered with a number across the calls so far."""
        ...


EvaluatorFactory = Callable[[RolloutConfig, QuerySource], IntervalEvaluator]


class DaemonEvaluator:
    """The daemon's analysis step, with every query evaluated at a past time."""

    def __init__(self, rollout: RolloutConfig, source: QuerySource) -> None:
        """Judge intervals of ``rollout`` with values from ``source``."""
        self._rollout = rollout
        self._source = source
        self._seen: dict[str, tuple[str, bool, str | None]] = {}  # query -> (what, answered, err)

    def evaluate(self, state: RolloutState, at: datetime) -> thresholds.IntervalVerdict:
        """Run the interval's queries at ``at`` and judge them as the daemon does."""
        evaluation = interval.evaluate(
            self._source, self._rollout, state, at, tolerated=(QueryError,)
        )
        for query, (what, outcome) in evaluation.outcomes.items():
            answered = outcome.value is not None and not math.isnan(outcome.value)
            _, before, _ = self._seen.get(query, (what, False, None))
            self._seen[query] = (what, before or answered, outcome.error)
        return evaluation.verdict

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


def default_evaluator(rollout: RolloutConfig, source: QuerySource) -> IntervalEvaluator:
    """What the daemon runs for ``rollout``: thresholds, and the sequential judge if enabled."""
    return DaemonEvaluator(rollout, source)
