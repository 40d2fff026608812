"""The sequential, anytime-valid canary judge (pure, numpy only, no I/O).

The daemon feeds it raw cumulative counters per version each poll and persists
the returned state; the detection benchmark drives the same code with
simulated counters::

    state = sequential.initial(config, canary_snapshot, stable_snapshot)
    state, judgement = sequential.update(config, state, canary_snapshot, stable_snapshot)
    annotation["judge"] = state.to_dict()

Modules: ``counts`` (counters to per-poll counts), ``eprocess`` (exact
conditional likelihood, e-processes, confidence sequences), ``sequential``
(config, decision rule, update), ``state`` (persisted evidence), ``report``
(judgement and reasons).
"""

from autocanary.judge.counts import CounterSnapshot, PollCounts, SeriesCounters
from autocanary.judge.report import Judgement, JudgeVerdict, MetricEvidence
from autocanary.judge.sequential import SequentialConfig, initial, skip, update
from autocanary.judge.state import JudgeState

__all__ = [
    "CounterSnapshot",
    "JudgeState",
    "JudgeVerdict",
    "Judgement",
    "MetricEvidence",
    "PollCounts",
    "SequentialConfig",
    "SeriesCounters",
    "initial",
    "skip",
    "update",
]
