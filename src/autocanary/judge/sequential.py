"""The sequential, anytime-valid canary judge: configuration, decision rule, and one poll's update.

Method: STATISTICS.md. Per metric (errors, then each latency threshold) a harm
e-process tests ``H0+: psi <= psi0`` and a safety e-process ``H0-: psi >= psi1``,
psi the canary-vs-stable odds ratio of an event. With M metrics:

- ROLLBACK as soon as some harm e-value reaches ``M/alpha`` (or the optional
  critical guard trips: canary error share over a limit with enough errors);
- PROMOTE once every metric's safety e-value has reached ``M/beta`` at some
  poll (the caller still applies warm-up and minimum holds);
- CONTINUE otherwise; at its deadline the caller applies the inconclusive policy.

By Ville's inequality a false rollback has probability <= alpha and a false
promotion <= beta however often the judge is polled.

Latency thresholds use the plain odds ratio of exceeding the same bucket
boundary on both versions, tested against the same psi0/psi1 as errors. It
works with any bucket layout; note the tolerance is then on the odds of being
slow, which is stricter than the same percentage on latency itself (for a
lognormal with sigma 0.5, odds ratio 1.2 above the p90 is about a 5% slowdown).

The hypotheses (psi0, psi1, grid, thresholds) are fixed when a release starts
and kept in the state: choosing them after seeing data would void the
guarantee, so a config change applies to the next release. alpha, beta and the
critical guard are read from the config at every poll.

``advance`` and ``decide`` work on batches; ``update`` calls them with a batch
of one, and the benchmark with thousands of simulated runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from autocanary.judge import counts, eprocess, report
from autocanary.judge.counts import CounterSnapshot, PollCounts
from autocanary.judge.eprocess import FloatArray, Grid, IntArray
from autocanary.judge.report import Judgement, MetricEvidence, Verdict
from autocanary.judge.state import JudgeState, MetricState

BoolArray = NDArray[np.bool_]

# Verdict codes in batch arrays.
CONTINUE, ROLLBACK, PROMOTE = 0, 1, 2
_VERDICTS = {CONTINUE: Verdict.CONTINUE, ROLLBACK: Verdict.ROLLBACK, PROMOTE: Verdict.PROMOTE}

# e-values are reported as floats that JSON can carry; beyond this they are "huge" anyway.
_MAX_LOG_EVALUE = math.log(1e300)


@dataclass(frozen=True)
class SequentialConfig:
    """Settings of the sequential judge (defaults from STATISTICS.md).

    Latency thresholds are bucket boundaries in seconds, either given
    (``latency_thresholds``) or picked at release start as the boundaries
    nearest the stable's ``latency_quantiles``; not both.
    """

    alpha: float = 0.05  # bound on false rollbacks, split over metrics
    beta: float = 0.05  # bound on false promotions, split over metrics
    tolerance: float = 0.2  # psi0 = 1 + tolerance: odds ratios up to this are harmless
    safe_ratio: float = 1.5  # psi1: safety means proven below this odds ratio
    latency_thresholds: tuple[float, ...] = ()
    latency_quantiles: tuple[float, ...] = ()
    critical_error_share: float | None = 0.2  # None disables the critical guard
    critical_min_errors: int = 20
    grid_points: int = 80
    grid_max: float = 2.5  # largest log odds ratio step of the mixture
    prior_sd: float = 0.7  # sd of the Gaussian mixture weights on that step

    def __post_init__(self) -> None:
        if not (0 < self.alpha < 1 and 0 < self.beta < 1):
            raise ValueError(f"alpha and beta must be in (0, 1), got {self.alpha}, {self.beta}")
        if not self.tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")
        if not self.safe_ratio >= self.psi0:
            raise ValueError(
                f"safe_ratio must be >= 1 + tolerance ({self.psi0}), got {self.safe_ratio}"
            )
        if self.latency_thresholds and self.latency_quantiles:
            raise ValueError("give latency thresholds or latency quantiles, not both")
        if any(not (t > 0 and math.isfinite(t)) for t in self.latency_thresholds):
            raise ValueError(
                f"latency thresholds must be positive seconds: {self.latency_thresholds}"
            )
        if any(not 0 < q < 1 for q in self.latency_quantiles):
            raise ValueError(f"latency quantiles must be in (0, 1): {self.latency_quantiles}")
        share = self.critical_error_share
        if share is not None and not 0 < share < 1:
            raise ValueError(f"critical_error_share must be in (0, 1), got {share}")
        self.grid()  # validates the grid settings

    @property
    def psi0(self) -> float:
        """The tolerated odds ratio."""
        return 1.0 + self.tolerance

    def grid(self) -> Grid:
        """The evidence grid for these settings."""
        return Grid(self.psi0, self.safe_ratio, self.grid_points, self.grid_max, self.prior_sd)


class Decisions(NamedTuple):
    """The decision rule's output for a batch: verdict codes and the e-values behind them."""

    verdict: IntArray  # (...,) CONTINUE / ROLLBACK / PROMOTE
    log_harm: FloatArray  # (..., M)
    log_safety: FloatArray  # (..., M)
    safe: BoolArray  # (..., M) safety proven now or before


def advance(grid: Grid, evidence: FloatArray, table: IntArray) -> FloatArray:
    """Evidence ``(..., M, grid.size)`` after one poll's counts ``(..., M, 4)``."""
    return evidence + eprocess.loglik_increment(grid, table)


def critical_guard(
    canary_requests: IntArray, canary_errors: IntArray, share: float | None, min_errors: int
) -> BoolArray:
    """The non-statistical guard: enough canary errors and too large a share of them."""
    errors = np.asarray(canary_errors)
    if share is None:
        return np.zeros(errors.shape, dtype=bool)
    return (errors >= min_errors) & (errors > share * np.asarray(canary_requests))


def decide(
    grid: Grid,
    evidence: FloatArray,
    safe: BoolArray,
    critical: BoolArray,
    *,
    alpha: float,
    beta: float,
) -> Decisions:
    """The decision rule over a batch, Bonferroni-split over the M metrics."""
    metrics = evidence.shape[-2]
    log_harm = eprocess.harm_log_evalue(grid, evidence)
    log_safety = eprocess.safety_log_evalue(grid, evidence)
    harmful = np.any(log_harm >= math.log(metrics / alpha), axis=-1) | critical
    now_safe = np.asarray(safe) | (log_safety >= math.log(metrics / beta))
    verdict = np.where(harmful, ROLLBACK, np.where(np.all(now_safe, axis=-1), PROMOTE, CONTINUE))
    return Decisions(verdict.astype(np.int64), log_harm, log_safety, now_safe)


def metric_names(thresholds: tuple[float, ...]) -> tuple[str, ...]:
    """Names of the metrics: errors, then ``latency>{le}s`` per threshold."""
    return ("errors", *(f"latency>{t:g}s" for t in thresholds))


def initial(
    config: SequentialConfig, canary: CounterSnapshot, stable: CounterSnapshot
) -> JudgeState:
    """The state at release start: hypotheses fixed, no evidence, counters as of now.

    A version that has no series yet (a new canary) is an empty snapshot; its
    series will count in full when they appear.
    """
    thresholds = config.latency_thresholds
    if config.latency_quantiles:
        thresholds = counts.pick_thresholds(stable.histogram(), config.latency_quantiles)
    grid = config.grid()
    zero = tuple(0.0 for _ in range(grid.size))
    return JudgeState(
        psi0=config.psi0,
        psi1=config.safe_ratio,
        grid_points=config.grid_points,
        grid_max=config.grid_max,
        prior_sd=config.prior_sd,
        thresholds=thresholds,
        metrics=tuple(MetricState(name, zero) for name in metric_names(thresholds)),
        canary=canary.vectors(thresholds),
        stable=stable.vectors(thresholds),
    )


def skip(state: JudgeState, canary: CounterSnapshot, stable: CounterSnapshot) -> JudgeState:
    """Move the counters to now without adding evidence (warm-up after pods become Ready)."""
    return replace(
        state, canary=canary.vectors(state.thresholds), stable=stable.vectors(state.thresholds)
    )


def update(
    config: SequentialConfig, state: JudgeState, canary: CounterSnapshot, stable: CounterSnapshot
) -> tuple[JudgeState, Judgement]:
    """Add one poll's evidence and decide. Pure: the caller persists the returned state."""
    grid = state.grid()
    fields = counts.fields_for(state.thresholds)
    now_canary = canary.vectors(state.thresholds)
    now_stable = stable.vectors(state.thresholds)
    inc_canary = counts.version_increase(state.canary, now_canary, fields)
    inc_stable = counts.version_increase(state.stable, now_stable, fields)
    table = counts.metric_table(inc_canary, inc_stable)

    evidence = advance(grid, np.array([m.evidence for m in state.metrics]), table)
    mh = np.array([m.mh for m in state.metrics]) + eprocess.mantel_haenszel_terms(table)
    totals = np.array([m.totals for m in state.metrics], dtype=np.int64) + table
    critical = critical_guard(
        totals[0, 0], totals[0, 1], config.critical_error_share, config.critical_min_errors
    )
    decided = decide(
        grid,
        evidence,
        np.array([m.safe for m in state.metrics]),
        critical,
        alpha=config.alpha,
        beta=config.beta,
    )

    metrics = tuple(
        MetricState(
            name=old.name,
            evidence=tuple(float(v) for v in evidence[i]),
            safe=bool(decided.safe[i]),
            mh=(float(mh[i, 0]), float(mh[i, 1])),
            totals=(int(totals[i, 0]), int(totals[i, 1]), int(totals[i, 2]), int(totals[i, 3])),
        )
        for i, old in enumerate(state.metrics)
    )
    new_state = replace(
        state, metrics=metrics, canary=now_canary, stable=now_stable, polls=state.polls + 1
    )
    poll = PollCounts.from_increases(inc_canary.tolist(), inc_stable.tolist())
    return new_state, _judgement(
        config, grid, new_state, decided, critical=bool(critical), poll=poll
    )


def _judgement(
    config: SequentialConfig,
    grid: Grid,
    state: JudgeState,
    decided: Decisions,
    *,
    critical: bool,
    poll: PollCounts,
) -> Judgement:
    count = len(state.metrics)
    confidence = 1 - config.alpha
    lows, highs = eprocess.confidence_sequence(
        grid, np.array([m.evidence for m in state.metrics]), config.alpha
    )
    evidence = []
    for i, m in enumerate(state.metrics):
        evidence.append(
            MetricEvidence(
                name=m.name,
                harm_evalue=math.exp(min(float(decided.log_harm[i]), _MAX_LOG_EVALUE)),
                harm_threshold=count / config.alpha,
                safety_evalue=math.exp(min(float(decided.log_safety[i]), _MAX_LOG_EVALUE)),
                safety_threshold=count / config.beta,
                safe=m.safe,
                ratio=_ratio(*m.mh),
                ci_low=float(lows[i]),
                ci_high=float(highs[i]),
                psi0=grid.psi0,
                psi1=grid.psi1_effective,
                canary_requests=m.totals[0],
                canary_events=m.totals[1],
                stable_requests=m.totals[2],
                stable_events=m.totals[3],
            )
        )
    metrics = tuple(evidence)
    verdict = _VERDICTS[int(decided.verdict)]
    if verdict is Verdict.ROLLBACK:
        harmful = [m for m in metrics if m.harmful]
        reasons = [report.harm_reason(m, confidence) for m in harmful]
        if critical:
            n, x = state.metrics[0].totals[:2]
            share = config.critical_error_share or 0.0
            reasons.insert(0, report.critical_reason(n, x, share))
        reason = "; ".join(reasons)
    elif verdict is Verdict.PROMOTE:
        reason = report.promote_reason(metrics, confidence)
    else:
        reason = report.continue_reason(metrics, confidence)
    return Judgement(verdict, reason, metrics, poll, confidence, critical)


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return math.inf if num > 0 else math.nan
