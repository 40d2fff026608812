"""``autocanary backtest``: what would this config have decided, over past Prometheus data?

A replay runs the daemon's own tick (:func:`autocanary.rollout.tick.run`: its
schedule and its decisions) against a simulated cluster whose pods are Ready at once, starting the
release at the window's start, and judges each due interval with the daemon's
queries evaluated at that past time (:mod:`autocanary.backtest.evaluate`, the
seam for another judge). Variants (``--set``) change the rollout's config and
are validated like it; reports print as timelines and a releases x variants
table, as JSON, or as a plot.

Modules: ``windows`` (times, releases file), ``overrides`` (``--set``),
``history`` and ``preflight`` (retention, data and version checks),
``simulation``, ``evaluate``, ``replay``, ``run`` (the whole backtest),
``report`` (results, JSON), ``render`` (text), ``plot`` (matplotlib),
``command`` (the CLI), ``synthetic`` (demo history as OpenMetrics), ``errors``.
"""

from autocanary.backtest.errors import (
    BacktestError,
    BacktestInputError,
    NoDataError,
    OverrideError,
    PlotUnavailable,
    RetentionError,
    UnknownVersionError,
)
from autocanary.backtest.evaluate import (
    DaemonEvaluator,
    EvaluatorFactory,
    IntervalEvaluator,
    default_evaluator,
)
from autocanary.backtest.replay import replay
from autocanary.backtest.report import (
    CheckPoint,
    Event,
    Outcome,
    Release,
    Replay,
    Report,
    TimelineEntry,
    Variant,
)
from autocanary.backtest.run import backtest
from autocanary.rollout.interval import QuerySource

__all__ = [
    "BacktestError",
    "BacktestInputError",
    "CheckPoint",
    "DaemonEvaluator",
    "EvaluatorFactory",
    "Event",
    "IntervalEvaluator",
    "NoDataError",
    "Outcome",
    "OverrideError",
    "PlotUnavailable",
    "QuerySource",
    "Release",
    "Replay",
    "Report",
    "RetentionError",
    "TimelineEntry",
    "UnknownVersionError",
    "Variant",
    "backtest",
    "default_evaluator",
    "replay",
]
