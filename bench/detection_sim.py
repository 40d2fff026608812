"""Simulated canary releases for the detection benchmark: traffic, errors, latency histograms.

A run is one release observed for up to ``HORIZON_MIN`` minutes. Requests are
Poisson at a total rate with a shared per-minute traffic factor, split between
the versions by the canary weight. Every request fails with its version's
error probability (on the log-odds scale both versions share per-minute noise;
a scenario may add canary-only noise) and lands in a histogram bucket drawn
from a lognormal latency (median 100 ms, sigma 0.5, shared per-minute shift)
with the project's own bucket boundaries; a scenario may add canary-only
per-minute latency noise. A scenario may also lose scrapes: each poll, each
version's counters are absent with probability ``gap``, and its error series
alone (once it exists) with the same probability. The judges see only
counters, as they would from Prometheus.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy.special import expit, logit, ndtr

from autocanary.latency import LATENCY_BUCKETS

HORIZON_MIN = 60
MEDIAN_S = 0.1
SIGMA = 0.5
BASE_ERRORS = 0.01
TRAFFIC_SD = 0.2  # per-minute log traffic factor, shared
SHARED_ERROR_SD = 0.3  # per-minute log-odds noise of the error rate, shared
SHARED_LATENCY_SD = 0.05  # per-minute log-latency shift, shared
BUCKETS = np.array(LATENCY_BUCKETS)

Curve = Callable[[float], float]  # minutes since release start -> value


def _const(value: float) -> Curve:
    return lambda _t: value


def _odds(rate: float, ratio: float) -> float:
    """The rate whose odds are ``ratio`` times those of ``rate``."""
    odds = ratio * rate / (1 - rate)
    return odds / (1 + odds)


@dataclass(frozen=True)
class Scenario:
    """One release in the corpus: how the canary and the stable behave over time."""

    name: str
    bad: bool  # a regression: rolling back is right, promoting is a miss
    stationary: bool  # effects constant in time, so Wald's SPRT time is defined
    canary_errors: Curve = field(default=_const(BASE_ERRORS))
    stable_errors: Curve = field(default=_const(BASE_ERRORS))
    canary_slowdown: Curve = field(default=_const(1.0))
    stable_slowdown: Curve = field(default=_const(1.0))
    tail_share: float = 0.0  # share of canary requests TAIL_FACTOR times slower
    canary_noise_sd: float = 0.0  # canary-only per-minute log-odds noise (mean rate kept)
    canary_latency_sd: float = 0.0  # canary-only per-minute log-latency noise (mean 0)
    gap: float = 0.0  # chance per poll and version that a scrape is missing
    boundary: bool = False  # at the edge of the harm null: rolling back is an error


TAIL_FACTOR = 4.0


def _onset(at: float) -> Curve:
    return lambda t: 0.05 if t >= at else BASE_ERRORS


def _cold(t: float) -> float:
    return 1.0 + math.exp(-t * 2)  # twice as slow at start, 13% after one minute


def _cold_errors(t: float) -> float:
    return BASE_ERRORS + 0.04 * math.exp(-t * 2)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("A/A", bad=False, stationary=True),
        Scenario(
            "boundary: error odds x1.2",
            bad=False,
            stationary=True,
            boundary=True,
            canary_errors=_const(_odds(BASE_ERRORS, 1.2)),
        ),
        Scenario(
            "boundary: latency x1.2",
            bad=False,
            stationary=True,
            boundary=True,
            canary_slowdown=_const(1.2),
        ),
        Scenario("canary-only latency noise", bad=False, stationary=False, canary_latency_sd=0.1),
        Scenario("canary-only error noise", bad=False, stationary=False, canary_noise_sd=0.3),
        Scenario("canary-only error noise x2", bad=False, stationary=False, canary_noise_sd=0.6),
        Scenario("scrape gaps 3%", bad=False, stationary=False, gap=0.03),
        Scenario(
            "shared incident 25%",
            bad=False,
            stationary=False,
            canary_errors=_const(0.25),
            stable_errors=_const(0.25),
        ),
        Scenario(
            "canary cold start",
            bad=False,
            stationary=False,
            canary_errors=_cold_errors,
            canary_slowdown=_cold,
        ),
        Scenario("errors 1->2%", bad=True, stationary=True, canary_errors=_const(0.02)),
        Scenario("errors 1->5%", bad=True, stationary=True, canary_errors=_const(0.05)),
        Scenario("errors 1->50%", bad=True, stationary=True, canary_errors=_const(0.5)),
        Scenario("latency x1.5", bad=True, stationary=True, canary_slowdown=_const(1.5)),
        Scenario("tail-only slowdown", bad=True, stationary=True, tail_share=0.02),
        Scenario(
            "errors 1->5%, scrape gaps 3%",
            bad=True,
            stationary=True,
            canary_errors=_const(0.05),
            gap=0.03,
        ),
        Scenario("late onset (5% at 30m)", bad=True, stationary=False, canary_errors=_onset(30)),
    )
}

WEIGHTS: dict[str, Curve] = {
    "10%": _const(0.1),
    "ramp": lambda t: min(0.5, 0.1 * (1 + math.floor(t / 2))),  # 10, 20, ..., 50% every 2 min
    "50/50": _const(0.5),
}

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


def latency_cells(log_median: FloatArray, tail_share: float = 0.0) -> FloatArray:
    """Probabilities of each histogram cell (buckets, then above the last), per row."""
    z = (np.log(BUCKETS)[None, :] - log_median[:, None]) / SIGMA
    cdf = ndtr(z)
    if tail_share:
        slow = ndtr(z - math.log(TAIL_FACTOR) / SIGMA)
        cdf = (1 - tail_share) * cdf + tail_share * slow
    cells: FloatArray = np.clip(np.diff(cdf, prepend=0.0, append=1.0, axis=1), 0.0, 1.0)
    return cells


def exceedance(threshold: float, slowdown: float, tail_share: float = 0.0) -> float:
    """Share of requests slower than ``threshold`` without noise."""
    cells = latency_cells(np.array([math.log(MEDIAN_S * slowdown)]), tail_share)[0]
    below = int(np.searchsorted(BUCKETS, threshold, side="right"))
    return float(cells[below:].sum())


@dataclass
class Traffic:
    """Everything the judges may look at, for a batch of runs.

    ``ticks[..., v, :]`` are the cumulative counters of version v (0 canary,
    1 stable) after each poll, in the judge's field layout; ``minutes`` holds
    per-minute requests, errors and histogram cells per version for the
    per-interval judges; ``excess`` the expected bad canary requests per tick
    caused by the release (errors, or slower than the stable's p99 bucket).
    """

    poll_s: int
    thresholds: tuple[float, ...]  # every bucket boundary counted, ascending
    pairs: tuple[tuple[float, float], ...]  # the judge's (stable, canary) boundary per metric
    ticks: IntArray  # (runs, ticks, 2, fields)
    minute_requests: IntArray  # (runs, minutes, 2)
    minute_errors: IntArray  # (runs, minutes, 2)
    minute_cells: IntArray  # (runs, minutes, 2, cells)
    excess: FloatArray  # (runs, ticks)
    excess_rate_full: float  # expected bad requests per second with all traffic on the canary
    absent: NDArray[np.bool_]  # (runs, ticks, 2) the version's counters missing from the poll
    errors_absent: NDArray[np.bool_]  # (runs, ticks, 2) its error series alone missing
    poll_requests: IntArray  # (runs, ticks, 2) requests per poll (Argo's irate window)
    poll_errors: IntArray  # (runs, ticks, 2)

    @property
    def pair_fields(self) -> list[tuple[int, int]]:
        """Each pair's (stable, canary) index among the bucket fields."""
        index = {le: i for i, le in enumerate(self.thresholds)}
        return [(index[s], index[c]) for s, c in self.pairs]


def simulate(
    scenario: Scenario,
    rate: float,
    weight: Curve,
    pairs: tuple[tuple[float, float], ...],
    runs: int,
    poll_s: int,
    seed: int,
) -> Traffic:
    """Simulate ``runs`` releases of one scenario at one traffic rate and weight schedule."""
    rng = np.random.default_rng(seed)
    thresholds = tuple(sorted({le for pair in pairs for le in pair}))
    ticks = HORIZON_MIN * 60 // poll_s
    minutes = HORIZON_MIN
    traffic = np.exp(rng.normal(-(TRAFFIC_SD**2) / 2, TRAFFIC_SD, (runs, minutes)))
    shared_err = rng.normal(0.0, SHARED_ERROR_SD, (runs, minutes))
    shared_lat = rng.normal(0.0, SHARED_LATENCY_SD, (runs, minutes))
    sd = scenario.canary_noise_sd
    canary_noise = rng.normal(-(sd**2) / 2, sd, (runs, minutes)) if sd else np.zeros((runs, 1))
    lat_sd = scenario.canary_latency_sd
    canary_lat = rng.normal(0.0, lat_sd, (runs, minutes)) if lat_sd else np.zeros((runs, 1))
    absent = rng.random((runs, ticks, 2)) < scenario.gap
    errors_absent = rng.random((runs, ticks, 2)) < scenario.gap
    bucket_index = [int(np.searchsorted(BUCKETS, t)) for t in thresholds]
    p99_bucket = int(np.searchsorted(BUCKETS, thresholds[-1], side="right"))
    fields = 3 + len(thresholds)
    cum = np.zeros((runs, 2, fields), dtype=np.int64)
    out_ticks = np.zeros((runs, ticks, 2, fields), dtype=np.int64)
    cells = len(BUCKETS) + 1
    minute_requests = np.zeros((runs, minutes, 2), dtype=np.int64)
    minute_errors = np.zeros((runs, minutes, 2), dtype=np.int64)
    minute_cells = np.zeros((runs, minutes, 2, cells), dtype=np.int64)
    excess = np.zeros((runs, ticks))
    poll_requests = np.zeros((runs, ticks, 2), dtype=np.int64)
    poll_errors = np.zeros((runs, ticks, 2), dtype=np.int64)
    for tick in range(ticks):
        t = (tick + 0.5) * poll_s / 60
        minute = tick * poll_s // 60
        total = rng.poisson(rate * poll_s * traffic[:, minute])
        n = rng.binomial(total, weight(t))
        counts = (n, total - n)
        noise_c = canary_noise[:, minute if sd else 0]
        error_p = (
            expit(logit(scenario.canary_errors(t)) + shared_err[:, minute] + noise_c),
            expit(logit(scenario.stable_errors(t)) + shared_err[:, minute]),
        )
        log_median = math.log(MEDIAN_S) + shared_lat[:, minute]
        canary_shift = canary_lat[:, minute if lat_sd else 0]
        cell_p = (
            latency_cells(
                log_median + canary_shift + math.log(scenario.canary_slowdown(t)),
                scenario.tail_share,
            ),
            latency_cells(log_median + math.log(scenario.stable_slowdown(t))),
        )
        for v in (0, 1):
            errors = rng.binomial(counts[v], error_p[v])
            hist = rng.multinomial(counts[v], cell_p[v])
            cumhist = np.cumsum(hist, axis=1)
            cum[:, v, 0] += counts[v]
            cum[:, v, 1] += errors
            cum[:, v, 2] += counts[v]
            for k, b in enumerate(bucket_index):
                cum[:, v, 3 + k] += cumhist[:, b]
            minute_requests[:, minute, v] += counts[v]
            minute_errors[:, minute, v] += errors
            minute_cells[:, minute, v] += hist
        out_ticks[:, tick] = cum
        poll_requests[:, tick] = np.stack(counts, -1)
        poll_errors[:, tick] = out_ticks[:, tick, :, 1] - (
            out_ticks[:, tick - 1, :, 1] if tick else 0
        )
        excess[:, tick] = counts[0] * _excess_share(scenario, t, p99_bucket)
    full = rate * _excess_share(scenario, HORIZON_MIN, p99_bucket)
    return Traffic(
        poll_s,
        thresholds,
        pairs,
        out_ticks,
        minute_requests,
        minute_errors,
        minute_cells,
        excess,
        full,
        absent,
        errors_absent & (out_ticks[..., 1] > 0),
        poll_requests,
        poll_errors,
    )


def _excess_share(scenario: Scenario, t: float, p99_bucket: int) -> float:
    """Expected share of canary requests made bad by the release (noise-free)."""
    errors = scenario.canary_errors(t) - scenario.stable_errors(t)
    slow_c = latency_cells(
        np.array([math.log(MEDIAN_S * scenario.canary_slowdown(t))]), scenario.tail_share
    )[0, p99_bucket:].sum()
    slow_s = latency_cells(np.array([math.log(MEDIAN_S * scenario.stable_slowdown(t))]))[
        0, p99_bucket:
    ].sum()
    return max(0.0, errors) + max(0.0, float(slow_c - slow_s))


def stable_histogram() -> dict[float, float]:
    """The stable's expected cumulative histogram, from which the judge picks thresholds."""
    cells = latency_cells(np.array([math.log(MEDIAN_S)]))[0] * 1e6
    cumulative = np.cumsum(cells)
    hist = {float(b): float(c) for b, c in zip(BUCKETS, cumulative[:-1], strict=True)}
    hist[math.inf] = float(cumulative[-1])
    return hist
