"""The sequential judge inside the daemon's analysis: which counters to read, and what they say.

Pure functions; the engine runs the queries. Counters are read raw (not as
rates) per series, so the judge can difference them itself with counter
reset handling. All counters of a version come from ONE query (the three
counter shapes joined with ``or``, each tagged by a label), evaluated at one
instant: requests, errors and buckets of a series are then from the same
samples on the same Prometheus, and a series whose read is incomplete or
inconsistent is recognised as such (see ``judge.counts``). The query shapes
are inputs (``promql.counter_queries`` per source), so any source works.
Evidence from each step's warm-up is skipped: the engine reads the counters
as of ``readyAt + warmup`` (a past instant) before the step's first poll, and
the judge moves its baseline there without counting.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from autocanary import promql
from autocanary.analysis.thresholds import (
    CheckResult,
    IntervalVerdict,
    Pods,
    metrics_of,
    side_variables,
    template_variables,
)
from autocanary.analysis.verdict import Verdict
from autocanary.config.models import RolloutConfig, SequentialAnalysisConfig
from autocanary.judge import (
    CounterSnapshot,
    Judgement,
    JudgeState,
    JudgeVerdict,
    SequentialConfig,
    SeriesCounters,
    initial,
    skip,
    update,
)
from autocanary.judge.report import number
from autocanary.promql import Sample

# The label that tags each sample of the joined counter query with its counter.
COUNTER_LABEL = "autocanary_counter"
_SERIES_IGNORED = frozenset({COUNTER_LABEL, "le", "__name__"})


@dataclass(frozen=True)
class CounterQueries:
    """The three raw-counter queries of one version, and their join into one query."""

    requests: str
    errors: str
    buckets: str

    def all(self) -> tuple[str, str, str]:
        """The queries in a fixed order."""
        return (self.requests, self.errors, self.buckets)

    def joined(self) -> str:
        """One query returning every counter, each sample tagged with ``COUNTER_LABEL``.

        ``label_replace`` with an empty source and regex adds the tag to every
        series, so ``or`` keeps all three sets (their label sets differ by it).
        """
        parts = (("requests", self.requests), ("errors", self.errors), ("bucket", self.buckets))
        return " or ".join(
            f'label_replace({query}, "{COUNTER_LABEL}", "{name}", "", "")' for name, query in parts
        )


def counter_queries(
    rollout: RolloutConfig,
    version: str,
    canary_version: str,
    stable_version: str,
    pods: Pods | None = None,
) -> CounterQueries:
    """Render the counter queries for ``version`` of ``rollout`` (whose pods are ``pods``)."""
    variables = side_variables(
        template_variables(rollout, canary_version, stable_version), version, pods or Pods()
    )
    requests, errors, buckets = promql.counter_queries(metrics_of(rollout))
    return CounterQueries(
        promql.render(requests, variables),
        promql.render(errors, variables),
        promql.render(buckets, variables),
    )


def _series_key(labels: Mapping[str, str]) -> str:
    """A series' identity: every label the query kept, except the counter tag and ``le``.

    One label (the usual ``instance``) is the key as it is.
    """
    kept = sorted((k, v) for k, v in labels.items() if k not in _SERIES_IGNORED)
    if len(kept) == 1:
        return kept[0][1]
    return ",".join(f"{k}={v}" for k, v in kept)


def snapshot(samples: Sequence[Sample]) -> CounterSnapshot:
    """One version's counters, keyed by series, from the joined query's samples.

    A series is identified by all labels the query shapes keep (instance, pod,
    ...), so two targets behind one Service stay two series. A series with
    requests but no error sample has its errors absent (``None``): the judge
    reads that as 0 only while the series has had no errors.
    """
    requests: dict[str, float] = {}
    errors: dict[str, float] = {}
    buckets: dict[str, dict[float, float]] = {}
    for labels, value in samples:
        key = _series_key(labels)
        kind = labels.get(COUNTER_LABEL)
        if kind == "requests":
            requests[key] = value
        elif kind == "errors":
            errors[key] = value
        elif kind == "bucket" and "le" in labels:
            buckets.setdefault(key, {})[float(labels["le"])] = value
    series = {
        key: SeriesCounters(requests=value, errors=errors.get(key), buckets=buckets.get(key, {}))
        for key, value in requests.items()
    }
    return CounterSnapshot(series)


def judge_config(cfg: SequentialAnalysisConfig) -> SequentialConfig:
    """The judge's own config from the rollout's."""
    return SequentialConfig(**cfg.judge_settings())


def judge_interval(
    cfg: SequentialAnalysisConfig,
    persisted: JudgeState | None,
    baseline: tuple[CounterSnapshot, CounterSnapshot] | None,
    now: tuple[CounterSnapshot, CounterSnapshot],
) -> tuple[JudgeState, Judgement]:
    """One poll of the judge: (canary, stable) snapshots in, new evidence and judgement out.

    ``baseline`` (the counters at the end of a step's warm-up) starts the
    release's evidence, or moves an existing baseline past the warm-up.
    """
    config = judge_config(cfg)
    if persisted is None:
        start = baseline or now
        state = initial(config, start[0], start[1])
    else:
        state = persisted
        if baseline is not None:
            state = skip(state, baseline[0], baseline[1])
    return update(config, state, now[0], now[1])


def all_safe(state: JudgeState | None) -> bool:
    """Whether the persisted evidence has proven safety for every metric."""
    return state is not None and bool(state.metrics) and all(m.safe for m in state.metrics)


def results(judgement: Judgement) -> tuple[CheckResult, ...]:
    """One result per judged metric, for verdict records, status and alerts."""
    out = []
    for m in judgement.metrics:
        verdict: Verdict = "fail" if m.harmful else "pass" if m.safe else "inconclusive"
        threshold = (
            f"odds ratio <= {number(m.psi0)}x: harm e {number(m.harm_evalue)}/"
            f"{number(m.harm_threshold)}, safety e {number(m.safety_evalue)}/"
            f"{number(m.safety_threshold)}, {judgement.confidence:.0%} simultaneous CS "
            f"{number(m.ci_low)}-{number(m.ci_high)}"
        )
        # With no events on the stable yet the point estimate is infinite; the
        # confidence sequence's lower end still says "at least this much worse".
        # With no events at all there is no estimate: no value, not a made-up 0.
        value: float | None = m.ratio
        if math.isinf(m.ratio):
            value = m.ci_low
        elif math.isnan(m.ratio):
            value = None
        reason = (
            f"canary {m.canary_events}/{m.canary_requests} vs stable "
            f"{m.stable_events}/{m.stable_requests}"
        )
        out.append(CheckResult(f"sequential:{m.name}", verdict, value, None, threshold, reason))
    return tuple(out)


def harm_proven(judgement: Judgement | None) -> bool:
    """Whether the judge proved the canary worse (or the critical guard tripped)."""
    return judgement is not None and judgement.verdict is JudgeVerdict.ROLLBACK


def combine(verdict: IntervalVerdict, judgement: Judgement, state: JudgeState) -> IntervalVerdict:
    """The interval's verdict with the judge's: proven harm fails it, otherwise it stands.

    "Undecided" does not make an interval inconclusive: raising the canary's
    weight while evidence accumulates is safe (the guarantee holds whatever the
    weights), and promotion separately waits for proven safety.
    """
    checks = (*verdict.checks, *results(judgement))
    if harm_proven(judgement):
        outcome: Verdict = "fail"
        reason = f"sequential judge: {judgement.reason}"
    else:
        outcome = verdict.verdict
        reason = f"{verdict.reason}; sequential judge: {judgement.reason}"
    if judgement.skipped:
        # incomplete or inconsistent reads are not counted; say so, they may be a scrape problem
        skipped = ", ".join(judgement.skipped)
        reason += f" (not counted this poll, read incomplete or inconsistent: {skipped})"
    return dataclasses.replace(
        verdict,
        verdict=outcome,
        checks=checks,
        reason=reason,
        judgement=judgement,
        judge_state=state,
    )


def unavailable(verdict: IntervalVerdict, error: str) -> IntervalVerdict:
    """The interval's verdict when the judge's counters could not be read: inconclusive."""
    return dataclasses.replace(
        verdict,
        verdict="inconclusive" if verdict.verdict != "fail" else "fail",
        reason=f"{verdict.reason}; sequential judge: counters unavailable: {error}",
    )
