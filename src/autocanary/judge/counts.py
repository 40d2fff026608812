"""Raw Prometheus counters per version, turned into per-poll counts for the judge.

The judge needs integer counts per poll, so it reads raw cumulative counters
(``increase()`` extrapolates to non-integers) and differences them locally.
Counters are kept per series (one per pod or per probe instance): a pod that
restarts shows a counter going down, and only that series' new value is its
increase; a pod that disappears (scale-down) simply stops contributing, where a
pre-summed counter would drop and look like a reset of everything. A series
seen for the first time contributes its whole value, since it started at zero
after the previous poll.

The per-poll counts become a table with one row ``(n, x, m, y)`` per metric:
canary requests and events, stable requests and events. Row 0 is errors, then
one row per latency threshold with ``events = observations - bucket{le=b}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

IntArray = NDArray[np.int64]

# Field layout of one series' counter vector: requests, errors, histogram
# observations (bucket le=+Inf), then the cumulative bucket at each threshold.
REQUESTS, ERRORS, OBSERVED = 0, 1, 2
_FIXED_FIELDS = 3

# A float counter further than this from an integer is not a raw counter; it most
# likely came through rate()/increase() and would bias the exact likelihood.
_INTEGER_SLACK = 1e-6


@dataclass(frozen=True)
class SeriesCounters:
    """Cumulative counters of one series as Prometheus returned them (floats).

    ``buckets`` maps a histogram bucket's upper bound ``le`` in seconds (``math.inf``
    for ``+Inf``) to its cumulative count; only the thresholds in use are needed.
    Without an ``+Inf`` bucket the request counter stands in for the observations.
    """

    requests: float
    errors: float
    buckets: Mapping[float, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CounterSnapshot:
    """One version's cumulative counters at one instant, keyed by series (pod, instance)."""

    series: Mapping[str, SeriesCounters]

    @classmethod
    def single(
        cls, requests: float, errors: float, buckets: Mapping[float, float] | None = None
    ) -> CounterSnapshot:
        """A snapshot of one pre-aggregated series (key ``""``)."""
        return cls({"": SeriesCounters(requests, errors, dict(buckets or {}))})

    def vectors(self, thresholds: Sequence[float]) -> dict[str, tuple[int, ...]]:
        """Each series' counters as integers in the judge's field layout."""
        return {key: _vector(key, c, thresholds) for key, c in self.series.items()}

    def histogram(self) -> dict[float, float]:
        """The buckets summed over series, for picking thresholds from the stable's history."""
        total: dict[float, float] = {}
        for counters in self.series.values():
            for le, count in counters.buckets.items():
                total[le] = total.get(le, 0.0) + count
        return total


def _integer(value: float, what: str) -> int:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} is {value}; a raw counter is a finite count >= 0")
    nearest = round(value)
    if abs(value - nearest) > _INTEGER_SLACK * max(1.0, value):
        raise ValueError(
            f"{what} is {value}, not a whole count: query the raw counter, not rate()/increase()"
        )
    return int(nearest)


def _bucket(buckets: Mapping[float, float], le: float, key: str) -> float:
    for bound, count in buckets.items():
        if math.isclose(bound, le, rel_tol=1e-9):
            return count
    raise ValueError(f"series {key!r} has no histogram bucket le={le:g}")


def _vector(key: str, counters: SeriesCounters, thresholds: Sequence[float]) -> tuple[int, ...]:
    where = f"series {key!r}"
    requests = _integer(counters.requests, f"{where} requests")
    observed = requests
    if any(math.isinf(le) for le in counters.buckets):
        observed = _integer(_bucket(counters.buckets, math.inf, key), f"{where} bucket le=+Inf")
    below = (
        _integer(_bucket(counters.buckets, le, key), f"{where} bucket le={le:g}")
        for le in thresholds
    )
    return (requests, _integer(counters.errors, f"{where} errors"), observed, *below)


def counter_increase(previous: IntArray, current: IntArray) -> IntArray:
    """Increase of counter vectors (last axis: one series' fields) with reset handling.

    A series with any counter lower than before restarted; its counters all
    restarted together, so its current values are the increase.
    """
    prev = np.asarray(previous, dtype=np.int64)
    cur = np.asarray(current, dtype=np.int64)
    reset = np.any(cur < prev, axis=-1, keepdims=True)
    return np.where(reset, cur, cur - prev)


def version_increase(
    previous: Mapping[str, Sequence[int]], current: Mapping[str, Sequence[int]], fields: int
) -> IntArray:
    """Sum of per-series increases between two polls of one version."""
    total = np.zeros(fields, dtype=np.int64)
    for key, values in current.items():
        cur = np.asarray(values, dtype=np.int64)
        prev = previous.get(key)
        total += cur if prev is None else counter_increase(np.asarray(prev, np.int64), cur)
    return total


def metric_table(canary: IntArray, stable: IntArray) -> IntArray:
    """Per-metric rows ``(n, x, m, y)`` from both versions' increases (any leading shape).

    Events are clipped into ``[0, trials]``: counters of different series can be
    scraped a moment apart, and a count that cannot be must not reach the likelihood.
    """
    c = np.asarray(canary, dtype=np.int64)
    s = np.asarray(stable, dtype=np.int64)

    def rows(v: IntArray) -> tuple[IntArray, IntArray]:
        trials = np.concatenate(
            [
                v[..., REQUESTS, None],
                np.repeat(v[..., OBSERVED, None], v.shape[-1] - _FIXED_FIELDS, -1),
            ],
            -1,
        )
        events = np.concatenate(
            [v[..., ERRORS, None], v[..., OBSERVED, None] - v[..., _FIXED_FIELDS:]], -1
        )
        return trials, np.clip(events, 0, trials)

    n, x = rows(c)
    m, y = rows(s)
    return np.stack([n, x, m, y], axis=-1)


@dataclass(frozen=True)
class PollCounts:
    """What one poll added, per version: requests, errors, observations, slow counts."""

    canary_requests: int
    canary_errors: int
    stable_requests: int
    stable_errors: int
    canary_observed: int = 0
    stable_observed: int = 0
    canary_slow: tuple[int, ...] = ()
    stable_slow: tuple[int, ...] = ()

    @classmethod
    def from_increases(cls, canary: Sequence[int], stable: Sequence[int]) -> PollCounts:
        """Counts from two increase vectors in the field layout."""
        c = [int(v) for v in canary]
        s = [int(v) for v in stable]
        return cls(
            canary_requests=c[REQUESTS],
            canary_errors=c[ERRORS],
            stable_requests=s[REQUESTS],
            stable_errors=s[ERRORS],
            canary_observed=c[OBSERVED],
            stable_observed=s[OBSERVED],
            canary_slow=tuple(max(0, c[OBSERVED] - b) for b in c[_FIXED_FIELDS:]),
            stable_slow=tuple(max(0, s[OBSERVED] - b) for b in s[_FIXED_FIELDS:]),
        )


def fields_for(thresholds: Sequence[float]) -> int:
    """Length of a counter vector with these latency thresholds."""
    return _FIXED_FIELDS + len(thresholds)


def pick_thresholds(
    histogram: Mapping[float, float], quantiles: Sequence[float]
) -> tuple[float, ...]:
    """Bucket boundaries nearest to the stable's quantiles, for latency thresholds.

    ``histogram`` is cumulative by ``le`` (with ``+Inf``), from the stable before
    the canary's data exist, so the thresholds never depend on canary data. For
    each quantile the finite boundary whose cumulative share is closest to it is
    taken (a tie goes to the higher, rarer one); duplicates collapse.
    """
    total = next((c for le, c in histogram.items() if math.isinf(le)), None)
    if total is None or total <= 0:
        raise ValueError("the stable has no latency observations (bucket le=+Inf) to pick from")
    bounds = sorted((le, c / total) for le, c in histogram.items() if math.isfinite(le))
    if not bounds:
        raise ValueError("the stable's histogram has no finite buckets")
    picked = []
    for q in quantiles:
        if not 0 < q < 1:
            raise ValueError(f"a latency quantile must be in (0, 1), got {q}")
        picked.append(min(bounds, key=lambda b: (abs(b[1] - q), -b[0]))[0])
    return tuple(sorted(set(picked)))
