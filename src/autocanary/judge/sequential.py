"""The sequential, anytime-valid canary judge: configuration, decision rule, and one poll's update.

Method: STATISTICS.md and the README's "How the sequential judge decides".
Per metric (errors, then each latency bucket pair) a harm e-process tests
``H0+: psi <= psi0`` and a safety e-process ``H0-: psi >= psi1``, psi the
canary-vs-stable odds ratio of an event. With M metrics:

- ROLLBACK as soon as some metric's harm e-value reaches ``M/alpha`` (or the
  optional critical guard trips: the canary's error share exceeds the
  stable's by a margin, with enough errors). The harm e-value is a fixed
  mixture of the e-process from release start (weight 0.8) and a change-point
  mixture over later start polls (0.2), so evidence of safety gathered before
  a regression begins does not delay catching it.
- PROMOTE once every metric's safety e-value has reached ``1/beta`` at some
  poll (a false promotion needs the safety e-process of a harmful metric to
  cross, so no split over metrics is needed); the caller still applies
  warm-up and minimum holds.
- CONTINUE otherwise; at its deadline the caller applies the inconclusive policy.

Each poll's log-likelihood ratio is tempered by ``1 / (1 + tau^2 I)``, I the
poll's information about the log odds ratio and tau^2 the between-poll noise
variance: the larger of the configured floor and a DerSimonian-Laird estimate
from the polls before (predictable, so any value keeps the e-processes
supermartingales under the model; it restores them approximately when the
canary's rate wanders from poll to poll around a harmless mean).

Latency is tested as a slowdown: the canary's share above ``b_c`` against the
stable's share above ``b_s``, with ``b_c >= (1 + latencyTolerance) b_s``
(:func:`counts.pick_pairs`), under odds ratio ``<= 1``.

alpha, beta, the hypotheses, grid, bucket pairs and noise floor are fixed
when a release starts and kept in the state: choosing them after seeing data
would void the guarantee, so a config change applies to the next release.

``advance`` and ``decide`` work on batches; ``update`` calls them with a batch
of one, and the benchmark with thousands of simulated runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from autocanary.judge import counts, eprocess, report
from autocanary.judge.counts import CounterSnapshot, PollCounts
from autocanary.judge.eprocess import FloatArray, Grid, IntArray
from autocanary.judge.report import Judgement, JudgeVerdict, MetricEvidence
from autocanary.judge.state import JudgeState, MetricState

BoolArray = NDArray[np.bool_]

# Verdict codes in batch arrays.
CONTINUE, ROLLBACK, PROMOTE = 0, 1, 2
_VERDICTS = {
    CONTINUE: JudgeVerdict.CONTINUE,
    ROLLBACK: JudgeVerdict.ROLLBACK,
    PROMOTE: JudgeVerdict.PROMOTE,
}

# e-values are reported as floats that JSON can carry; beyond this they are "huge" anyway.
_MAX_LOG_EVALUE = math.log(1e300)

# Weight of the e-process from release start in the harm e-value; the rest goes to
# the change-point mixture (prior 1/(t(t+1)) over the poll t where harm begins).
MAIN_WEIGHT = 0.8


@dataclass(frozen=True)
class SequentialConfig:
    """Settings of the sequential judge (defaults from STATISTICS.md, tuned by bench/detection.py).

    Latency is tested at bucket pairs (see :func:`counts.pick_pairs`): from the
    stable's boundaries given in ``latency_thresholds``, or from those nearest
    the stable's ``latency_quantiles`` at release start; not both.
    """

    alpha: float = 0.05  # bound on false rollbacks, split over metrics
    beta: float = 0.05  # bound on false promotions
    tolerance: float = 0.2  # errors: psi0 = 1 + tolerance, odds ratios up to it are harmless
    safe_ratio: float = 1.5  # errors: safety means proven below this odds ratio
    latency_tolerance: float = 0.2  # latency: a slowdown up to this factor is harmless
    latency_thresholds: tuple[float, ...] = ()
    latency_quantiles: tuple[float, ...] = ()
    critical_error_excess: float | None = None  # None disables the critical guard
    critical_min_errors: int = 20
    noise_floor: float = 0.2  # least per-poll sd of the log odds ratio (bench/detection_noise.py)
    grid_points: int = 80
    grid_max: float = 2.5  # largest log odds ratio step of the mixture
    prior_sd: float = 0.7  # sd of the Gaussian mixture weights on that step

    def __post_init__(self) -> None:
        if not (0 < self.alpha < 1 and 0 < self.beta < 1):
            raise ValueError(f"alpha and beta must be in (0, 1), got {self.alpha}, {self.beta}")
        if not self.tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")
        if not self.latency_tolerance >= 0:
            raise ValueError(f"latency tolerance must be >= 0, got {self.latency_tolerance}")
        if not self.safe_ratio > self.psi0:
            raise ValueError(
                f"safe_ratio must be above 1 + tolerance ({self.psi0}), got {self.safe_ratio}"
            )
        if self.latency_thresholds and self.latency_quantiles:
            raise ValueError("give latency thresholds or latency quantiles, not both")
        if any(not (t > 0 and math.isfinite(t)) for t in self.latency_thresholds):
            raise ValueError(
                f"latency thresholds must be positive seconds: {self.latency_thresholds}"
            )
        if any(not 0 < q < 1 for q in self.latency_quantiles):
            raise ValueError(f"latency quantiles must be in (0, 1): {self.latency_quantiles}")
        excess = self.critical_error_excess
        if excess is not None and not 0 < excess < 1:
            raise ValueError(f"critical_error_excess must be in (0, 1), got {excess}")
        if not (self.noise_floor >= 0 and math.isfinite(self.noise_floor)):
            raise ValueError(f"noise_floor must be >= 0, got {self.noise_floor}")
        self.grid()  # validates the grid settings

    @property
    def psi0(self) -> float:
        """The tolerated error odds ratio."""
        return 1.0 + self.tolerance

    def grid(self) -> Grid:
        """The evidence grid of the error metric."""
        return Grid(self.psi0, self.safe_ratio, self.grid_points, self.grid_max, self.prior_sd)

    def latency_grid(self) -> Grid:
        """The evidence grid of a latency metric (the bucket pair carries the tolerance)."""
        ratio = self.safe_ratio / self.psi0
        return Grid(1.0, ratio, self.grid_points, self.grid_max, self.prior_sd)


class Evidence(NamedTuple):
    """Batched evidence per metric: log-likelihood ratios, change-point statistic, noise sums.

    Shapes ``(..., M, size)``, ``(..., M, points)`` and ``(..., M, 5)``.
    """

    loglik: FloatArray
    change: FloatArray
    noise: FloatArray


class Decisions(NamedTuple):
    """The decision rule's output for a batch: verdict codes and the e-values behind them."""

    verdict: IntArray  # (...,) CONTINUE / ROLLBACK / PROMOTE
    log_harm: FloatArray  # (..., M)
    log_safety: FloatArray  # (..., M)
    safe: BoolArray  # (..., M) safety proven now or before


def empty_evidence(grids: Sequence[Grid], batch: tuple[int, ...] = ()) -> Evidence:
    """Evidence before the first poll."""
    metrics = len(grids)
    return Evidence(
        np.zeros((*batch, metrics, grids[0].size)),
        np.full((*batch, metrics, grids[0].points), -np.inf),
        np.zeros((*batch, metrics, 5)),
    )


def advance(
    grids: Sequence[Grid], evidence: Evidence, table: IntArray, poll: int, noise_floor: float
) -> Evidence:
    """Evidence after poll number ``poll`` (1 for the first) with counts ``(..., M, 4)``."""
    tau2 = np.maximum(eprocess.noise_variance(evidence.noise), noise_floor**2)
    temper = 1 / (1 + tau2 * eprocess.information(table))
    increments = np.stack(
        [eprocess.loglik_increment(g, table[..., i, :]) for i, g in enumerate(grids)], axis=-2
    )
    increments = increments * temper[..., None]
    log_prior = -math.log(poll * (poll + 1))
    change = np.stack(
        [
            eprocess.change_point_step(
                g, evidence.change[..., i, :], increments[..., i, :], log_prior
            )
            for i, g in enumerate(grids)
        ],
        axis=-2,
    )
    return Evidence(
        evidence.loglik + increments, change, eprocess.noise_sums(evidence.noise, table)
    )


def critical_guard(totals: IntArray, excess: float | None, min_errors: int) -> BoolArray:
    """The non-statistical guard on the errors row ``(..., 4)``.

    Trips when the canary's error share exceeds the stable's by more than ``excess``.
    """
    t = np.asarray(totals, dtype=np.float64)
    n, x, m, y = (t[..., i] for i in range(4))
    if excess is None:
        return np.zeros(n.shape, dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        canary = np.where(n > 0, x / n, 0.0)
        stable = np.where(m > 0, y / m, 0.0)
    return np.asarray((x >= min_errors) & (canary > stable + excess))


def decide(
    grid: Grid,
    evidence: Evidence,
    safe: BoolArray,
    critical: BoolArray,
    *,
    alpha: float,
    beta: float,
) -> Decisions:
    """The decision rule over a batch: harm Bonferroni-split over the M metrics, safety at beta.

    Every metric's grid has the same shape (only psi0 differs), so one grid's
    indices and weights serve all.
    """
    metrics = evidence.loglik.shape[-2]
    main = eprocess.harm_log_evalue(grid, evidence.loglik)
    late = eprocess.change_log_evalue(grid, evidence.change)
    log_harm = np.logaddexp(main + math.log(MAIN_WEIGHT), late + math.log(1 - MAIN_WEIGHT))
    log_safety = eprocess.safety_log_evalue(grid, evidence.loglik)
    harmful = np.any(log_harm >= math.log(metrics / alpha), axis=-1) | critical
    now_safe = np.asarray(safe) | (log_safety >= math.log(1 / beta))
    verdict = np.where(harmful, ROLLBACK, np.where(np.all(now_safe, axis=-1), PROMOTE, CONTINUE))
    return Decisions(verdict.astype(np.int64), log_harm, log_safety, now_safe)


def metric_names(pairs: Sequence[tuple[float, float]]) -> tuple[str, ...]:
    """Names of the metrics: errors, then ``latency>{canary le}s[/{stable le}s]`` per pair."""
    names = ["errors"]
    for b_s, b_c in pairs:
        names.append(f"latency>{b_c:g}s" if b_s == b_c else f"latency>{b_c:g}s/{b_s:g}s")
    return tuple(names)


def pair_indices(state: JudgeState) -> list[tuple[int, int]]:
    """Each latency pair's (stable, canary) index among the state's bucket fields."""
    index = {le: i for i, le in enumerate(state.thresholds)}
    return [(index[b_s], index[b_c]) for b_s, b_c in state.latency_pairs]


def initial(
    config: SequentialConfig, canary: CounterSnapshot, stable: CounterSnapshot
) -> JudgeState:
    """The state at release start: settings pinned, no evidence, counters as of now.

    A version that has no series yet (a new canary) is an empty snapshot; its
    series become baselines when they appear.
    """
    pairs: tuple[tuple[float, float], ...] = ()
    if config.latency_thresholds or config.latency_quantiles:
        pairs = counts.pick_pairs(
            stable.histogram(),
            config.latency_tolerance,
            quantiles=config.latency_quantiles,
            thresholds=config.latency_thresholds,
        )
    thresholds = tuple(sorted({le for pair in pairs for le in pair}))
    grid = config.grid()
    zero = tuple(0.0 for _ in range(grid.size))
    state = JudgeState(
        psi0=config.psi0,
        psi1=config.safe_ratio,
        grid_points=config.grid_points,
        grid_max=config.grid_max,
        prior_sd=config.prior_sd,
        thresholds=thresholds,
        metrics=tuple(MetricState(name, zero) for name in metric_names(pairs)),
        alpha=config.alpha,
        beta=config.beta,
        latency_pairs=pairs,
        noise_floor=config.noise_floor,
    )
    return skip(state, canary, stable)


def skip(state: JudgeState, canary: CounterSnapshot, stable: CounterSnapshot) -> JudgeState:
    """Move the counters to now without adding evidence (warm-up after pods become Ready)."""
    rc = counts.reconcile(state.canary, state.canary_starts, canary, state.thresholds)
    rs = counts.reconcile(state.stable, state.stable_starts, stable, state.thresholds)
    return replace(
        state,
        canary=rc.counters,
        stable=rs.counters,
        canary_starts=rc.start_times,
        stable_starts=rs.start_times,
    )


def _state_evidence(state: JudgeState) -> Evidence:
    points = state.grid().points
    return Evidence(
        np.array([m.evidence for m in state.metrics]),
        np.array([m.change or (-math.inf,) * points for m in state.metrics]),
        np.array([m.noise for m in state.metrics]),
    )


def update(
    config: SequentialConfig, state: JudgeState, canary: CounterSnapshot, stable: CounterSnapshot
) -> tuple[JudgeState, Judgement]:
    """Add one poll's evidence and decide. Pure: the caller persists the returned state.

    Only the critical guard's settings are read from ``config``; everything
    the guarantee rests on was pinned in ``state`` at release start.
    """
    grids = state.grids()
    rc = counts.reconcile(state.canary, state.canary_starts, canary, state.thresholds)
    rs = counts.reconcile(state.stable, state.stable_starts, stable, state.thresholds)
    table = counts.metric_table(rc.increase, rs.increase, pair_indices(state))

    polls = state.polls + 1
    evidence = advance(grids, _state_evidence(state), table, polls, state.noise_floor)
    mh = np.array([m.mh for m in state.metrics]) + eprocess.mantel_haenszel_terms(table)
    totals = np.array([m.totals for m in state.metrics], dtype=np.int64) + table
    critical = critical_guard(totals[0], config.critical_error_excess, config.critical_min_errors)
    decided = decide(
        grids[0],
        evidence,
        np.array([m.safe for m in state.metrics]),
        critical,
        alpha=state.alpha,
        beta=state.beta,
    )

    metrics = tuple(
        MetricState(
            name=old.name,
            evidence=tuple(float(v) for v in evidence.loglik[i]),
            safe=bool(decided.safe[i]),
            mh=(float(mh[i, 0]), float(mh[i, 1])),
            totals=(int(totals[i, 0]), int(totals[i, 1]), int(totals[i, 2]), int(totals[i, 3])),
            change=tuple(float(v) for v in evidence.change[i]),
            noise=tuple(float(v) for v in evidence.noise[i]),  # type: ignore[arg-type]
        )
        for i, old in enumerate(state.metrics)
    )
    new_state = replace(
        state,
        metrics=metrics,
        canary=rc.counters,
        stable=rs.counters,
        canary_starts=rc.start_times,
        stable_starts=rs.start_times,
        polls=polls,
    )
    poll = PollCounts.from_table(table)
    skipped = tuple(f"canary {k}" for k in rc.skipped) + tuple(f"stable {k}" for k in rs.skipped)
    judgement = _judgement(config, grids, new_state, decided, critical=bool(critical), poll=poll)
    return new_state, replace(judgement, skipped=skipped)


def _judgement(
    config: SequentialConfig,
    grids: Sequence[Grid],
    state: JudgeState,
    decided: Decisions,
    *,
    critical: bool,
    poll: PollCounts,
) -> Judgement:
    count = len(state.metrics)
    # simultaneous over the metrics: each sequence at alpha/M
    confidence = 1 - state.alpha
    intervals = [
        eprocess.confidence_sequence(g, np.array(m.evidence), state.alpha / count)
        for g, m in zip(grids, state.metrics, strict=True)
    ]
    evidence = []
    for i, m in enumerate(state.metrics):
        evidence.append(
            MetricEvidence(
                name=m.name,
                harm_evalue=math.exp(min(float(decided.log_harm[i]), _MAX_LOG_EVALUE)),
                harm_threshold=count / state.alpha,
                safety_evalue=math.exp(min(float(decided.log_safety[i]), _MAX_LOG_EVALUE)),
                safety_threshold=1 / state.beta,
                safe=m.safe,
                ratio=_ratio(*m.mh),
                ci_low=float(intervals[i][0]),
                ci_high=float(intervals[i][1]),
                psi0=grids[i].psi0,
                psi1=grids[i].psi1_effective,
                canary_requests=m.totals[0],
                canary_events=m.totals[1],
                stable_requests=m.totals[2],
                stable_events=m.totals[3],
            )
        )
    metrics = tuple(evidence)
    verdict = _VERDICTS[int(decided.verdict)]
    if verdict is JudgeVerdict.ROLLBACK:
        harmful = [m for m in metrics if m.harmful]
        reasons = [report.harm_reason(m, confidence) for m in harmful]
        if critical:
            n, x, mm, y = state.metrics[0].totals
            excess = config.critical_error_excess or 0.0
            reasons.insert(0, report.critical_reason(n, x, mm, y, excess))
        reason = "; ".join(reasons)
    elif verdict is JudgeVerdict.PROMOTE:
        reason = report.promote_reason(metrics, confidence)
    else:
        reason = report.continue_reason(metrics, confidence)
    return Judgement(verdict, reason, metrics, poll, confidence, critical)


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return math.inf if num > 0 else math.nan
