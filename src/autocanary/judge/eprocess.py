"""Exact conditional likelihood of the canary's share of events, and the e-processes built on it.

Per poll the canary served ``n`` requests with ``x`` events (errors, or
requests slower than a threshold) and the stable ``m`` requests with ``y``
events. Given the total ``e = x + y``, ``x`` follows Fisher's noncentral
hypergeometric distribution with odds ratio ``psi``::

    P(x) = C(n, x) C(m, e - x) psi^x / Z(psi),   Z(psi) = sum_k C(n, k) C(m, e - k) psi^k

The stable's own rate drops out, so an incident that hits both versions does
not count against the canary. The evidence is kept as ``Lambda(theta)``, the
sum over polls of ``l(theta) - l(theta0)`` with ``theta = log psi`` on a
uniform grid. The mixture e-processes of STATISTICS.md and the confidence
sequence are read off that one vector, so the judge's whole state per metric
is a few hundred floats.

Every function takes arrays with any leading batch shape: the daemon passes a
batch of one, the benchmark thousands of simulated runs through the same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

# Arguments of exp() are floored here: below it a term is < 1e-304 of the largest one,
# and exp() of such arguments (subnormal or underflowing results) is up to 30x slower.
_EXP_FLOOR = -700.0

# exp() of a term, times exp() of its growth across a block of grid points, stays
# below e**_BLOCK_GROWTH (< e**709, the float64 limit), and a term that matters
# anywhere in the block is at least e**-(_BLOCK_GROWTH + 40) at the block's start,
# far above the subnormal range (e**-708): blocking loses nothing that counts.
_BLOCK_GROWTH = 300.0


@dataclass(frozen=True)
class Grid:
    """The grid of log odds ratios on which evidence is kept, and the mixture weights.

    The harm e-process mixes alternatives ``psi0 * e**u_j`` and the safety one
    ``psi1 * e**-u_j``, ``u_j = j * u_max / points`` (j = 1..points), with
    Gaussian weights of standard deviation ``prior_sd`` on ``u``. ``psi0`` sits
    exactly on the grid; ``psi1`` is rounded *down* to the nearest grid point
    (``psi1_effective``), which makes the safety null ``psi >= psi1_effective``
    a superset of the configured one: conservative, never optimistic.
    """

    psi0: float
    psi1: float
    points: int = 80
    u_max: float = 2.5
    prior_sd: float = 0.7

    def __post_init__(self) -> None:
        if not (self.psi0 > 0 and math.isfinite(self.psi0)):
            raise ValueError(f"psi0 must be a positive number, got {self.psi0}")
        if not (self.psi1 >= self.psi0 and math.isfinite(self.psi1)):
            raise ValueError(f"psi1 must be at least psi0 ({self.psi0}), got {self.psi1}")
        if self.points < 1:
            raise ValueError(f"the grid needs at least one point, got {self.points}")
        if not (self.u_max > 0 and self.prior_sd > 0):
            raise ValueError("u_max and prior_sd must be positive")

    @cached_property
    def step(self) -> float:
        """Spacing of the grid in log odds ratio."""
        return self.u_max / self.points

    @cached_property
    def psi1_offset(self) -> int:
        """Grid steps from psi0 up to the effective psi1."""
        # the small epsilon keeps psi1 exactly on a grid point from rounding one step down
        return math.floor(math.log(self.psi1 / self.psi0) / self.step + 1e-9)

    @cached_property
    def harm_index(self) -> int:
        """Index of psi0 in ``thetas``."""
        return max(0, self.points - self.psi1_offset)

    @cached_property
    def safety_index(self) -> int:
        """Index of the effective psi1 in ``thetas``."""
        return self.harm_index + self.psi1_offset

    @cached_property
    def size(self) -> int:
        """Number of grid points."""
        return max(self.harm_index + self.points, self.safety_index) + 1

    @cached_property
    def thetas(self) -> FloatArray:
        """The log odds ratios of the grid, ascending."""
        offsets = np.arange(self.size, dtype=np.float64) - self.harm_index
        return math.log(self.psi0) + self.step * offsets

    @cached_property
    def psi1_effective(self) -> float:
        """The safety null's boundary actually tested (psi1 rounded down to the grid)."""
        return float(np.exp(self.thetas[self.safety_index]))

    @cached_property
    def log_weights(self) -> FloatArray:
        """Log mixture weights of u_1..u_points (normalised)."""
        u = self.step * np.arange(1, self.points + 1, dtype=np.float64)
        logw = -(u**2) / (2 * self.prior_sd**2)
        return logw - _logsumexp(logw, axis=-1)


def _logsumexp(values: FloatArray, axis: int) -> FloatArray:
    top = np.max(values, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):  # log(0) = -inf is the right answer for an empty sum
        total = np.log(
            np.sum(np.exp(np.maximum(values - top, _EXP_FLOOR)), axis=axis, keepdims=True)
        )
    result: FloatArray = np.squeeze(total + top, axis=axis)
    return result


def _log_weights(n: FloatArray, m: FloatArray, e: FloatArray) -> tuple[FloatArray, FloatArray]:
    """``log C(n, k) C(m, e - k)`` over the support ``k = lo + s``, relative to ``k = lo``.

    Built from the ratio of neighbouring terms, so no log-gamma is needed; padded
    entries past the support of a row are ``-inf``. Returns (weights, lo).
    """
    lo = np.maximum(0.0, e - m)
    hi = np.minimum(n, e)
    width = int(np.max(hi - lo)) + 1
    k = lo[:, None] + np.arange(width, dtype=np.float64)
    inside = k < hi[:, None]  # where the ratio to the next term is defined
    kk = np.where(inside, k, lo[:, None])
    ratio = np.log((n[:, None] - kk) * (e[:, None] - kk)) - np.log(
        (kk + 1) * (m[:, None] - e[:, None] + kk + 1)
    )
    weights = np.zeros_like(ratio)
    np.cumsum(ratio[:, :-1], axis=1, out=weights[:, 1:])
    return np.where(k <= hi[:, None], weights, -np.inf), lo


def log_partition(n: IntArray, m: IntArray, e: IntArray, thetas: FloatArray) -> FloatArray:
    """``log Z(e**theta)`` up to a constant per row, for rows (n, m, e) and ascending ``thetas``.

    Exact: a sum over the whole support. Within a block of grid points the terms
    are ``exp(a_k + k*theta_r) * exp(k*(theta - theta_r))``, a matrix product,
    so only one ``exp`` per support point and block is needed (the blocks are
    as wide as float64 range allows, see ``_BLOCK_GROWTH``).
    """
    nf = np.asarray(n, dtype=np.float64).ravel()
    mf = np.asarray(m, dtype=np.float64).ravel()
    ef = np.asarray(e, dtype=np.float64).ravel()
    weights, lo = _log_weights(nf, mf, ef)
    rows, width = weights.shape
    s = np.arange(width, dtype=np.float64)
    out = np.empty((rows, thetas.size))
    start = 0
    while start < thetas.size:
        theta_r = float(thetas[start])
        reach = _BLOCK_GROWTH / max(width - 1, 1)
        stop = int(np.searchsorted(thetas, theta_r + reach, side="right"))
        stop = max(stop, start + 1)
        top = _mode_term(weights, lo, nf, mf, ef, theta=theta_r)
        block = thetas[start:stop]
        # the floor also turns the padding's -inf into e**-700: with the growth factor
        # below e**300 such terms stay under e**-400 of the sum, invisible in float64
        scaled = np.exp(np.maximum(weights + s * theta_r - top[:, None], _EXP_FLOOR))
        growth = np.exp(np.outer(s, block - theta_r))
        out[:, start:stop] = np.log(scaled @ growth) + top[:, None] + lo[:, None] * block
        start = stop
    return out


def _mode_term(
    weights: FloatArray,
    lo: FloatArray,
    n: FloatArray,
    m: FloatArray,
    e: FloatArray,
    *,
    theta: float,
) -> FloatArray:
    """The largest term ``a_k + (k - lo)*theta`` of each row, found at the FNCH mode.

    The mode is where the ratio of neighbouring terms crosses one, the root of
    ``(psi-1)k^2 - (psi(n+e+2) + m - e)k + psi(n+1)(e+1)``; the root is taken
    in its cancellation-free form.
    """
    psi = math.exp(theta)
    b = psi * (n + e + 2) + m - e
    c = psi * (n + 1) * (e + 1)
    root = 2 * c / (b + np.sqrt(np.maximum(b * b - 4 * (psi - 1) * c, 0.0)))
    hi = np.minimum(n, e)
    offset = (np.clip(np.floor(root), lo, hi) - lo).astype(np.intp)
    return weights[np.arange(weights.shape[0]), offset] + offset * theta


def loglik_increment(grid: Grid, table: IntArray) -> FloatArray:
    """One poll's ``l(theta) - l(theta0)`` on the grid, for counts ``table[..., :] = (n, x, m, y)``.

    Rows where the poll carries no information about psi (no events, or one
    version without requests) are exactly zero and skipped.
    """
    counts = np.asarray(table, dtype=np.int64)
    flat = counts.reshape(-1, 4)
    out = np.zeros((flat.shape[0], grid.size))
    n, x, m, y = flat.T
    e = x + y
    width = np.minimum(n, e) - np.maximum(0, e - m)  # support size - 1; 0 means no information
    # rows are padded to the widest support in a call, so rows of similar width go together
    size_class = np.where(width > 0, np.ceil(np.log2(np.maximum(width, 1))), -1)
    for cls in np.unique(size_class[size_class >= 0]):
        rows = np.flatnonzero(size_class == cls)
        logz = log_partition(n[rows], m[rows], e[rows], grid.thetas)
        loglik = x[rows, None] * grid.thetas - logz
        out[rows] = loglik - loglik[:, grid.harm_index, None]
    return out.reshape((*counts.shape[:-1], grid.size))


def harm_log_evalue(grid: Grid, evidence: FloatArray) -> FloatArray:
    """Log of the harm e-process for ``H0+: psi <= psi0`` from the evidence vectors."""
    i0 = grid.harm_index
    above = evidence[..., i0 + 1 : i0 + grid.points + 1] - evidence[..., i0, None]
    return _logsumexp(above + grid.log_weights, axis=-1)


def safety_log_evalue(grid: Grid, evidence: FloatArray) -> FloatArray:
    """Log of the safety e-process for ``H0-: psi >= psi1`` from the evidence vectors."""
    i1 = grid.safety_index
    below = evidence[..., i1 - grid.points : i1][..., ::-1] - evidence[..., i1, None]
    return _logsumexp(below + grid.log_weights, axis=-1)


def confidence_sequence(
    grid: Grid, evidence: FloatArray, alpha: float
) -> tuple[FloatArray, FloatArray]:
    """The ``1 - alpha`` confidence sequence of psi, (lower, upper), from evidence vectors.

    Every grid point ``c`` gets the one-sided mixture e-values against
    ``psi <= c`` and ``psi >= c`` (truncated at the grid's ends, which only
    makes them smaller). The lower bound is the last point of the run of points
    rejected at ``2/alpha`` from the bottom up, the upper bound likewise from
    the top down, so a true psi below the lower bound implies the e-process at
    the grid point just above it crossed ``2/alpha``: probability <= alpha/2 at
    any time (Ville). ``0`` and ``inf`` mean the grid's end was reached.
    """
    lam = np.asarray(evidence, dtype=np.float64)
    size = grid.size
    offsets = np.arange(1, grid.points + 1)[None, :]
    index = np.arange(size)[:, None]
    edge = np.full((*lam.shape[:-1], 1), -np.inf)  # out-of-grid reads give weight 0
    padded = np.concatenate([edge, lam, edge], axis=-1)
    cut = math.log(2 / alpha)
    rejected = []
    for neighbours in (index + offsets, index - offsets):
        lam_n = padded[..., np.clip(neighbours, -1, size) + 1]
        log_e = _logsumexp(lam_n - lam[..., None] + grid.log_weights, axis=-1)
        rejected.append(log_e >= cut)
    above, below = rejected
    low_run = np.where(above.all(-1), size, np.argmin(above, axis=-1))
    high_run = np.where(below.all(-1), 0, size - np.argmin(below[..., ::-1], axis=-1))
    psi = np.exp(grid.thetas)
    lower = np.where(low_run > 0, psi[np.maximum(low_run - 1, 0)], 0.0)
    upper = np.where(high_run < size, psi[np.minimum(high_run, size - 1)], np.inf)
    return lower, upper


def mantel_haenszel_terms(table: IntArray) -> FloatArray:
    """One poll's Mantel-Haenszel numerator and denominator, ``[..., 2]``, for the odds ratio.

    Summed over polls, ``num / den`` estimates psi with the polls as strata, so
    a changing canary weight does not bias it (pooled totals would).
    """
    counts = np.asarray(table, dtype=np.float64)
    n, x, m, y = (counts[..., i] for i in range(4))
    total = n + m
    safe_total = np.where(total > 0, total, 1.0)
    num = np.where(total > 0, x * (m - y) / safe_total, 0.0)
    den = np.where(total > 0, y * (n - x) / safe_total, 0.0)
    return np.stack([num, den], axis=-1)


def information(table: IntArray) -> FloatArray:
    """Approximate Fisher information about the log odds ratio in each row ``(n, x, m, y)``.

    The inverse of Woolf's variance with 0.5 added to each cell; 0 where a row
    carries no information (no events, or a version without requests). It only
    sets how much a poll is tempered, so its approximation costs power, never
    validity.
    """
    c = np.asarray(table, dtype=np.float64)
    n, x, m, y = (c[..., i] for i in range(4))
    variance = 1 / (x + 0.5) + 1 / (n - x + 0.5) + 1 / (y + 0.5) + 1 / (m - y + 0.5)
    informative = (n > 0) & (m > 0) & (x + y > 0) & (x + y < n + m)
    out: FloatArray = np.where(informative, 1 / variance, 0.0)
    return out


def log_odds_ratio(table: IntArray) -> FloatArray:
    """The per-row log odds ratio estimate canary vs stable (0.5 added to each cell)."""
    c = np.asarray(table, dtype=np.float64)
    n, x, m, y = (c[..., i] for i in range(4))
    out: FloatArray = np.log((x + 0.5) * (m - y + 0.5)) - np.log((n - x + 0.5) * (y + 0.5))
    return out


def noise_variance(sums: FloatArray) -> FloatArray:
    """DerSimonian-Laird estimate of the between-poll variance of the log odds ratio.

    ``sums[..., :]`` = (K, sum w, sum w^2, sum w t, sum w t^2) over the K
    informative polls so far, ``w`` the information and ``t`` the estimate.
    Zero until two polls are in and whenever Cochran's Q is below its
    expectation under no noise.
    """
    k, s0, s2w, s1, sq = (np.asarray(sums, dtype=np.float64)[..., i] for i in range(5))
    safe_s0 = np.where(s0 > 0, s0, 1.0)
    q = sq - s1 * s1 / safe_s0
    scale = s0 - s2w / safe_s0
    tau2 = (q - (k - 1)) / np.where(scale > 0, scale, 1.0)
    out: FloatArray = np.where((k >= 2) & (scale > 0), np.maximum(tau2, 0.0), 0.0)
    return out


def noise_sums(sums: FloatArray, table: IntArray) -> FloatArray:
    """The running sums of :func:`noise_variance` with one more poll's rows added."""
    w = information(table)
    t = log_odds_ratio(table)
    used = w > 0
    add = np.stack(
        [
            used.astype(np.float64),
            w,
            w * w,
            np.where(used, w * t, 0.0),
            np.where(used, w * t * t, 0.0),
        ],
        axis=-1,
    )
    out: FloatArray = np.asarray(sums, dtype=np.float64) + add
    return out


def change_point_step(
    grid: Grid, change: FloatArray, increment: FloatArray, log_prior: float
) -> FloatArray:
    """One poll of the change-point mixture: ``log R_j`` per harm alternative.

    ``R_j(t) = (R_j(t-1) + pi_t) * L_t(psi0 e**u_j) / L_t(psi0)``: the mixture over
    start times ``s`` (weight ``pi_s``) of likelihood ratios taken from ``s`` on.
    Each term is a nonnegative supermartingale under ``psi <= psi0`` from its
    start, so the mixture is one too, however much evidence of safety came
    before a regression began.
    """
    i0 = grid.harm_index
    alternatives = increment[..., i0 + 1 : i0 + grid.points + 1]
    out: FloatArray = np.logaddexp(change, log_prior) + alternatives
    return out


def change_log_evalue(grid: Grid, change: FloatArray) -> FloatArray:
    """Log of the change-point e-process from ``log R_j`` (weights as the harm mixture)."""
    return _logsumexp(change + grid.log_weights, axis=-1)
