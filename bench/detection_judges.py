"""The judges the detection benchmark compares, all fed the same simulated counters.

- ``sequential``: autocanary's own judge, the very code the daemon runs
  (``counts.counter_increase``/``metric_table``, ``sequential.advance``/
  ``critical_guard``/``decide``); the benchmark only batches the runs. Scrape
  gaps go through the daemon's rules (an absent version keeps its remembered
  counters; an absent error series skips the version's poll once it had errors).
- ``sprt``: Wald's SPRT of the true odds ratio against psi0 on the errors (or
  the most harmful latency pair), knowing the truth: the optimal test for that
  one alternative, at the plain alpha and beta, run on the same counters.
- ``flagger-cal``: Flagger's built-in checks every minute (request success
  rate and p99 over the last minute); ``threshold`` failed checks roll back,
  ``iterations`` passed checks promote; both limits calibrated per traffic
  rate so that identical releases are rolled back at the judge's alpha.
- ``argo-doc``: Argo Rollouts' documented background-analysis example verbatim:
  success rate from ``irate`` (the last poll's requests) every 5 minutes,
  ``successCondition: result[0] >= 0.95``, ``failureLimit: 3``; the rollout's
  steps (4 x 10 minutes) promote at minute 40. ``argo-cal``: the same with
  its threshold calibrated like Flagger's.
- ``kayenta``: Kayenta's NetflixACAJudge in spirit: per-minute error rate and
  p99 of canary and stable, a Mann-Whitney classification at 98% confidence
  (High when the Hodges-Lehmann interval's lower end exceeds a quarter of the
  estimate), score = share of metrics passing; an interval every 10 minutes on
  all data so far, score < 75 rolls back, the last (30 min) needs >= 95.
  Kayenta's outlier removal is left out.

Every judge returns verdict codes (0 undecided, 1 rollback, 2 promote) and the
decision time in minutes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtri
from scipy.stats import nchypergeom_fisher

from autocanary.judge import counts, sequential
from autocanary.judge.sequential import SequentialConfig
from detection_sim import BUCKETS, FloatArray, IntArray, Traffic

UNDECIDED, ROLLBACK, PROMOTE = 0, sequential.ROLLBACK, sequential.PROMOTE
BoolArray = NDArray[np.bool_]


@dataclass
class Outcome:
    """Per run: verdict code and decision time (minutes; NaN while undecided)."""

    verdict: IntArray
    minutes: FloatArray


def _read(
    previous: IntArray, current: IntArray, absent: BoolArray, errors_absent: BoolArray
) -> tuple[IntArray, IntArray]:
    """One poll of both versions through the daemon's rules: (increase, counters to remember)."""
    skip = absent | (errors_absent & (previous[..., counts.ERRORS] > 0))
    read = current.copy()
    # an error series not seen with errors yet reads as 0 (the probe creates it lazily)
    read[..., counts.ERRORS] = np.where(errors_absent, 0, current[..., counts.ERRORS])
    increase = counts.counter_increase(previous, read)
    increase = np.where(skip[..., None], 0, increase)
    remembered = np.where(skip[..., None], previous, np.maximum(previous, read))
    return increase, remembered


def run_sequential(
    traffic: Traffic, config: SequentialConfig, warmup_s: int = 0, min_hold_s: int = 0
) -> Outcome:
    """autocanary's sequential judge, polled every ``traffic.poll_s`` seconds.

    ``warmup_s`` moves the counters on without evidence at first (``sequential.skip``
    in the daemon); ``min_hold_s`` is the steps' minimum time: a PROMOTE before it
    keeps the run under watch (proven safety stays proven, harm can still roll back).
    """
    grid = config.grid()
    grids = [grid, *(config.latency_grid() for _ in traffic.pairs)]
    runs, ticks = traffic.ticks.shape[:2]
    metrics = len(grids)
    evidence = sequential.empty_evidence(grids, (runs,))
    safe = np.zeros((runs, metrics), dtype=bool)
    totals = np.zeros((runs, metrics, 4), dtype=np.int64)
    verdict = np.zeros(runs, dtype=np.int64)
    minutes = np.full(runs, np.nan)
    previous = np.zeros_like(traffic.ticks[:, 0])
    polls = 0
    for tick in range(ticks):
        increase, previous = _read(
            previous,
            traffic.ticks[:, tick],
            traffic.absent[:, tick],
            traffic.errors_absent[:, tick],
        )
        if (tick + 1) * traffic.poll_s <= warmup_s:
            continue  # the daemon's warm-up: counters move on, no evidence
        active = np.flatnonzero(verdict == UNDECIDED)
        if active.size == 0:
            break
        polls += 1
        table = counts.metric_table(increase[active, 0], increase[active, 1], traffic.pair_fields)
        now_evidence = sequential.advance(
            grids,
            sequential.Evidence(*(a[active] for a in evidence)),
            table,
            polls,
            config.noise_floor,
        )
        for whole, part in zip(evidence, now_evidence, strict=True):
            whole[active] = part
        totals[active] += table
        critical = sequential.critical_guard(
            totals[active, 0], config.critical_error_excess, config.critical_min_errors
        )
        decided = sequential.decide(
            grid, now_evidence, safe[active], critical, alpha=config.alpha, beta=config.beta
        )
        safe[active] = decided.safe
        held = (decided.verdict == PROMOTE) & ((tick + 1) * traffic.poll_s < min_hold_s)
        now = np.where(held, UNDECIDED, decided.verdict)
        verdict[active] = now
        minutes[active[now != UNDECIDED]] = (tick + 1) * traffic.poll_s / 60
    return Outcome(verdict, minutes)


def run_sprt(
    traffic: Traffic,
    metric: int,
    psi_true: float,
    psi_null: float,
    alpha: float,
    beta: float,
    warmup_s: int = 0,
) -> Outcome:
    """Wald's SPRT of ``psi_true`` against ``psi_null`` on one metric, polled like the judge.

    It skips the same warm-up, so its times count from release start as the judge's do.
    """
    upper, lower = math.log((1 - beta) / alpha), math.log(beta / (1 - alpha))
    runs, ticks = traffic.ticks.shape[:2]
    llr = np.zeros(runs)
    verdict = np.zeros(runs, dtype=np.int64)
    minutes = np.full(runs, np.nan)
    previous = np.zeros_like(traffic.ticks[:, 0])
    for tick in range(ticks):
        current = traffic.ticks[:, tick]
        increase = current - previous
        previous = current
        if (tick + 1) * traffic.poll_s <= warmup_s:
            continue
        table = counts.metric_table(increase[:, 0], increase[:, 1], traffic.pair_fields)[:, metric]
        n, x, m, y = table.T
        e = x + y
        informative = (n > 0) & (m > 0) & (e > 0)
        with np.errstate(all="ignore"):
            step = nchypergeom_fisher.logpmf(x, n + m, n, e, psi_true) - nchypergeom_fisher.logpmf(
                x, n + m, n, e, psi_null
            )
        open_ = verdict == UNDECIDED
        llr += np.where(informative & open_, np.nan_to_num(step), 0.0)
        rollback = open_ & (llr >= upper)
        promote = open_ & (llr <= lower)
        verdict[rollback] = ROLLBACK
        verdict[promote] = PROMOTE
        minutes[rollback | promote] = (tick + 1) * traffic.poll_s / 60
    return Outcome(verdict, minutes)


def histogram_quantile(q: float, cells: IntArray) -> FloatArray:
    """Prometheus' ``histogram_quantile`` over histogram cells (last axis; last cell is +Inf)."""
    cum = np.cumsum(cells, axis=-1)
    total = cum[..., -1]
    rank = q * total
    idx = np.argmax(cum >= rank[..., None], axis=-1)
    upper = np.append(BUCKETS, BUCKETS[-1])[idx]
    lower = np.where(idx > 0, np.append(0.0, BUCKETS)[idx], 0.0)
    below = np.where(
        idx > 0, np.take_along_axis(cum, np.maximum(idx - 1, 0)[..., None], -1)[..., 0], 0
    )
    inside = np.take_along_axis(cells, idx[..., None], -1)[..., 0]
    frac = np.where(inside > 0, (rank - below) / np.maximum(inside, 1), 1.0)
    value = np.where(idx >= len(BUCKETS), BUCKETS[-1], lower + (upper - lower) * frac)
    return np.where(total > 0, value, np.nan)


def _fixed_checks(
    success: FloatArray, p99: FloatArray, min_success: float, max_p99: float
) -> IntArray:
    # NaN (no canary traffic) fails the check, as Flagger treats missing data
    return np.asarray((success >= min_success) & (p99 <= max_p99))


def run_flagger(
    traffic: Traffic,
    min_success: float = 0.99,
    max_p99: float = 0.5,
    threshold: int = 5,
    iterations: int = 10,
    skip_minutes: int = 0,
) -> Outcome:
    """Flagger-style fixed thresholds, one check per minute on the last minute.

    As in Flagger's scheduler, a failed check only counts towards ``threshold``
    and does not advance the analysis; passed checks do.
    """
    req = traffic.minute_requests[:, skip_minutes:, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        success = 1 - traffic.minute_errors[:, skip_minutes:, 0] / req
    p99 = histogram_quantile(0.99, traffic.minute_cells[:, skip_minutes:, 0])
    passed = _fixed_checks(success, p99, min_success, max_p99)
    outcome = _count_checks(passed, fail_at=threshold, pass_at=iterations, promote_on_count=False)
    return Outcome(outcome.verdict, outcome.minutes + skip_minutes)


def run_argo_doc(
    traffic: Traffic,
    min_success: float = 0.95,
    interval: int = 5,
    failure_limit: int = 3,
    promote_at: int = 40,
    skip_minutes: int = 0,
) -> Outcome:
    """Argo Rollouts' documented background analysis (see the module doc).

    ``irate`` over a 5m range reads the last two samples: the success rate of the
    poll before each measurement. No data (NaN) fails ``successCondition``.
    Measurements at minutes ``skip + interval``, ``skip + 2 interval``, ...; the
    ``failure_limit + 1``-th failure rolls back, otherwise the steps promote.
    """
    per_minute = 60 // traffic.poll_s
    req = traffic.poll_requests[..., 0]
    err = traffic.poll_errors[..., 0]
    runs = req.shape[0]
    verdict = np.zeros(runs, dtype=np.int64)
    when = np.full(runs, np.nan)
    failures = np.zeros(runs, dtype=np.int64)
    for minute in range(skip_minutes + interval, promote_at + skip_minutes + 1, interval):
        tick = minute * per_minute - 1
        with np.errstate(invalid="ignore", divide="ignore"):
            success = 1 - err[:, tick] / req[:, tick]
        failures += ~(success >= min_success)
        open_ = verdict == UNDECIDED
        rollback = open_ & (failures > failure_limit)
        verdict[rollback] = ROLLBACK
        when[rollback] = minute
    promote = verdict == UNDECIDED
    verdict[promote] = PROMOTE
    when[promote] = promote_at + skip_minutes
    return Outcome(verdict, when)


def argo_doc_success(traffic: Traffic, interval: int = 5, promote_at: int = 40) -> FloatArray:
    """The success rates ``run_argo_doc`` measures, for calibrating its threshold."""
    per_minute = 60 // traffic.poll_s
    ticks = [m * per_minute - 1 for m in range(interval, promote_at + 1, interval)]
    with np.errstate(invalid="ignore", divide="ignore"):
        out: FloatArray = 1 - traffic.poll_errors[:, ticks, 0] / traffic.poll_requests[:, ticks, 0]
    return out


def flagger_checks(traffic: Traffic) -> tuple[FloatArray, FloatArray]:
    """Per-minute canary success rate and p99 as Flagger's checks see them."""
    req = traffic.minute_requests[:, :, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        success = 1 - traffic.minute_errors[:, :, 0] / req
    return success, histogram_quantile(0.99, traffic.minute_cells[:, :, 0])


def calibrate(false_rollbacks: Callable[[float], float], target: float) -> float:
    """The strictest level q in [0, 0.5] whose false-rollback rate is at most ``target``.

    ``false_rollbacks(q)`` is the anchor's rollback rate on identical releases
    with thresholds at the q-quantiles of what it measures; it falls as q does.
    """
    low, high = 0.0, 0.5
    for _ in range(14):
        mid = (low + high) / 2
        if false_rollbacks(mid) <= target:
            low = mid
        else:
            high = mid
    return low


def _count_checks(passed: IntArray, fail_at: int, pass_at: int, promote_on_count: bool) -> Outcome:
    """Roll back at ``fail_at`` failed checks; promote at ``pass_at`` passed (or made) checks."""
    runs, minutes = passed.shape
    failed = np.cumsum(~passed, axis=1)
    progress = np.cumsum(np.ones_like(passed) if promote_on_count else passed, axis=1)
    verdict = np.zeros(runs, dtype=np.int64)
    when = np.full(runs, np.nan)
    for minute in range(minutes):
        open_ = verdict == UNDECIDED
        rollback = open_ & (failed[:, minute] >= fail_at)
        promote = open_ & ~rollback & (progress[:, minute] >= pass_at)
        verdict[rollback] = ROLLBACK
        verdict[promote] = PROMOTE
        when[rollback | promote] = minute + 1
    return Outcome(verdict, when)


def _hodges_lehmann_high(canary: FloatArray, stable: FloatArray, confidence: float) -> IntArray:
    """Kayenta's MannWhitneyClassifier, direction ``increase``: is the canary High?"""
    k1, k2 = canary.shape[1], stable.shape[1]
    diffs = np.sort((canary[:, :, None] - stable[:, None, :]).reshape(len(canary), -1), axis=1)
    z = ndtri(1 - (1 - confidence) / 2)
    qu = max(1, math.floor(k1 * k2 / 2 - z * math.sqrt(k1 * k2 * (k1 + k2 + 1) / 12)))
    lower = diffs[:, qu - 1]
    estimate = np.median(diffs, axis=1)
    return np.asarray(lower > 0.25 * np.abs(estimate))


def run_kayenta(
    traffic: Traffic,
    interval: int = 10,
    lifetime: int = 30,
    marginal: float = 75.0,
    pass_score: float = 95.0,
    confidence: float = 0.98,
    skip_minutes: int = 0,
) -> Outcome:
    """Kayenta-style Mann-Whitney judge on per-minute points, all data since the start.

    ``skip_minutes`` is Kayenta's warm-up: the lifetime starts after it.
    """
    req = np.maximum(traffic.minute_requests[:, skip_minutes:], 1)
    error_rate = traffic.minute_errors[:, skip_minutes:] / req
    cells = traffic.minute_cells[:, skip_minutes:]
    p99 = np.nan_to_num(histogram_quantile(0.99, cells), nan=0.0)
    runs = req.shape[0]
    verdict = np.zeros(runs, dtype=np.int64)
    when = np.full(runs, np.nan)
    for end in range(interval, lifetime + 1, interval):
        high = [
            _hodges_lehmann_high(error_rate[:, :end, 0], error_rate[:, :end, 1], confidence),
            _hodges_lehmann_high(p99[:, :end, 0], p99[:, :end, 1], confidence),
        ]
        score = 100.0 * (2 - np.sum(high, axis=0)) / 2
        open_ = verdict == UNDECIDED
        fail = open_ & ((score < marginal) | ((end == lifetime) & (score < pass_score)))
        promote = open_ & ~fail & (end == lifetime)
        verdict[fail] = ROLLBACK
        verdict[promote] = PROMOTE
        when[fail | promote] = end + skip_minutes
    return Outcome(verdict, when)
