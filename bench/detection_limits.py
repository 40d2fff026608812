"""Wald's SPRT expected decision time: the lower bound for any test with the same alpha, beta.

For a stationary scenario each metric has a true odds ratio; a test between
the null boundary (psi0 for harm, psi1 for safety) and the truth needs, by
Wald's approximation, an expected log-likelihood ratio of
``(1-b) log((1-b)/a) + b log(b/(1-a))`` (a = false alarm, b = miss). The
information per minute is the exact Kullback-Leibler divergence of the per-minute
conditional likelihood (FNCH) at the expected counts, so the bound is in the
same currency as our judge. A bad release is caught as soon as its most
harmful metric is; a good one is promoted when the slowest metric is proven
safe. Bonferroni is not applied here: the limit is for the plain alpha, beta.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from scipy.stats import nchypergeom_fisher

from detection_sim import HORIZON_MIN, Curve, Scenario, exceedance

MAX_MINUTES = 24 * 60


def _boundary(false_alarm: float, miss: float) -> float:
    return (1 - miss) * math.log((1 - miss) / false_alarm) + miss * math.log(
        miss / (1 - false_alarm)
    )


@cache
def _kl_at(n: int, m: int, e: int, psi_true: float, psi_null: float) -> float:
    lo, hi = max(0, e - m), min(n, e)
    if hi <= lo:
        return 0.0
    x = np.arange(lo, hi + 1)
    log_true = nchypergeom_fisher.logpmf(x, n + m, n, e, psi_true)
    log_null = nchypergeom_fisher.logpmf(x, n + m, n, e, psi_null)
    keep = np.isfinite(log_true)
    p = np.exp(log_true[keep])
    # where scipy's null pmf underflows the true one is negligible there too (clip keeps it finite)
    return float(np.sum(p * (log_true[keep] - np.maximum(log_null[keep], -745.0))))


def _kl_per_minute(
    rate: float, weight: float, p_c: float, p_s: float, psi_true: float, psi_null: float
) -> float:
    n = round(rate * 60 * weight)
    m = round(rate * 60 * (1 - weight))
    events = n * p_c + m * p_s
    low = math.floor(events)
    frac = events - low
    # the expected count is rarely whole: interpolate between its neighbours
    return (1 - frac) * _kl_at(n, m, low, psi_true, psi_null) + frac * _kl_at(
        n, m, low + 1, psi_true, psi_null
    )


def _odds_ratio(p_c: float, p_s: float) -> float:
    return (p_c / (1 - p_c)) / (p_s / (1 - p_s))


def metric_rates(
    scenario: Scenario, pairs: tuple[tuple[float, float], ...]
) -> list[tuple[float, float]]:
    """Noise-free event probabilities (canary, stable) of every metric (latency at its pair)."""
    rates = [(scenario.canary_errors(0), scenario.stable_errors(0))]
    for b_s, b_c in pairs:
        slow_c = exceedance(b_c, scenario.canary_slowdown(0), scenario.tail_share)
        slow_s = exceedance(b_s, scenario.stable_slowdown(0))
        rates.append((slow_c, slow_s))
    return rates


def sprt_minutes(
    scenario: Scenario,
    rate: float,
    weight: Curve,
    pairs: tuple[tuple[float, float], ...],
    psi0: float,
    psi1: float,
    alpha: float,
    beta: float,
) -> float | None:
    """Expected SPRT decision time in minutes, or None where it is not defined.

    ``psi0``/``psi1`` are the error metric's; a latency pair carries the
    tolerance itself, so its hypotheses are 1 and ``psi1 / psi0``.
    """
    if not scenario.stationary:
        return None
    times = []
    for i, (p_c, p_s) in enumerate(metric_rates(scenario, pairs)):
        null0, null1 = (psi0, psi1) if i == 0 else (1.0, psi1 / psi0)
        psi = _odds_ratio(p_c, p_s)
        if scenario.bad and psi <= null0:
            continue
        if not scenario.bad and psi >= null1:
            return None
        null = null0 if scenario.bad else null1
        need = _boundary(alpha, beta) if scenario.bad else _boundary(beta, alpha)
        times.append(_time_to(need, rate, weight, p_c, p_s, psi, null))
    if not times:
        return None
    return min(times) if scenario.bad else max(times)


def _time_to(
    need: float, rate: float, weight: Curve, p_c: float, p_s: float, psi: float, null: float
) -> float:
    total = 0.0
    for minute in range(MAX_MINUTES):
        w = weight(min(minute + 0.5, HORIZON_MIN))
        kl = _kl_per_minute(rate, w, p_c, p_s, psi, null)
        if total + kl >= need:
            return minute + (need - total) / kl
        total += kl
    return math.inf
