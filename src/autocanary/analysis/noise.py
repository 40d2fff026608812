"""How much of an error rate measured over a few hundred requests is chance.

An error-rate check compares errors / requests over one window with a
threshold. At a few hundred requests a window, a healthy canary with the
stable's 1% of errors measures anywhere from 0 to 2.5%, and a check failing
on the measured rate alone rolled back every healthy release of the
benchmark against Argo Rollouts (bench/versus_argo.py, a 1% baseline, 20
requests a second). So a ratio check fails only when its count of errors is
one a rate at the threshold would give less often than ``significance``: a
one-sided exact binomial test, the test an SRE would do by hand. The
stable's rate, in a comparison, is taken at the upper end of its own
confidence interval, as its window is as noisy as the canary's.

Pure functions over counts: exact sums of binomial terms in log space, or,
once the count's variance is large enough for it to be as good, the normal
approximation (a window of a million requests must not cost thousands of
terms per bisection step); no statistics library.
"""

from __future__ import annotations

import math

#: From this variance (n p (1 - p)) on, the normal approximation with continuity
#: correction is within about 5% (relative) of the exact tail near 1%: 1.27% for
#: 1.31% decides a test at 1% as the exact sum would, but for a hair's breadth.
NORMAL_FROM = 400.0


def _log_pmf(k: int, n: int, p: float) -> float:
    """log P(X = k) for X ~ Binomial(n, p), 0 < p < 1."""
    return (
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
    )


def _sum_pmf(ks: range, n: int, p: float) -> float:
    """Sum of P(X = k) over ``ks``, from its largest term (no underflow)."""
    logs = [_log_pmf(k, n, p) for k in ks]
    if not logs:
        return 0.0
    top = max(logs)
    return min(1.0, math.exp(top) * math.fsum(math.exp(x - top) for x in logs))


def at_least(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): how often rate ``p`` gives ``k`` or more errors."""
    if k <= 0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    variance = n * p * (1.0 - p)
    if variance >= NORMAL_FROM:
        return 0.5 * math.erfc((k - 0.5 - n * p) / math.sqrt(2.0 * variance))
    # Sum the shorter side: a few terms either way for small rates.
    if k > n * p:
        return _sum_pmf(range(k, n + 1), n, p)
    return max(0.0, 1.0 - _sum_pmf(range(k), n, p))


def at_most(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    return 1.0 - at_least(k + 1, n, p)


def upper_bound(k: int, n: int, alpha: float) -> float:
    """The one-sided (1 - alpha) upper confidence bound of a rate seen as ``k`` of ``n``.

    Clopper-Pearson: the rate at which ``k`` or fewer errors happen with
    probability ``alpha``, found by bisection.
    """
    if n <= 0:
        return 1.0
    if k >= n:
        return 1.0
    low, high = k / n, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        if at_most(k, n, mid) > alpha:
            low = mid
        else:
            high = mid
    return high
