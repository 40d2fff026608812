"""Raw Prometheus counters per version, turned into per-poll counts for the judge.

The judge needs integer counts per poll, so it reads raw cumulative counters
(``increase()`` extrapolates to non-integers) and differences them locally,
per series (one per pod, probe instance or scrape target). Real scrapes are
messier than counters in a textbook, and each rule below keeps the count
honest without looking at outcomes (errors, slow requests), so the
e-processes stay valid:

- Every series ever seen is remembered with its last accepted counters. A
  series absent from a poll (a failed scrape, a stale marker) contributes
  nothing and, when it returns, only its increase since it was last seen.
- A series seen for the first time is a baseline, not an increase: it may
  have existed before (missed at release start, back from a long gap), and
  counting its whole lifetime would inject thousands of requests at once.
- A decrease is a counter reset only when a restart is evident: the process
  start time moved forward and the requests went down, or (without a start
  time) the trial counters (requests, and histogram observations) both fell
  below half their remembered values. Then the new values are the increase.
  A start time that changed otherwise is another process behind the same
  target (an HA pair scraped through one address): the series is re-based
  without evidence. Any other decrease is an inconsistent read (two
  Prometheus replicas a scrape apart): that series' poll is skipped and the
  higher counters kept, so nothing is counted twice.
- An absent error series reads as 0 errors only while the series has had no
  errors (the probe creates it with the first error); once it had errors, an
  absent error series makes the read incomplete and that series' poll is
  skipped. A series without its histogram (when thresholds are in use), or
  with errors above requests or buckets out of order, is skipped likewise.

The per-poll counts become a table with one row ``(n, x, m, y)`` per metric:
canary requests and events, stable requests and events. Row 0 is errors, then
one row per latency threshold with ``events = observations - bucket{le=b}``.
"""

from __future__ import annotations

import itertools
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

# Marks a field whose series was absent from the read (never stored in state).
ABSENT = -1


@dataclass(frozen=True)
class SeriesCounters:
    """Cumulative counters of one series as Prometheus returned them (floats).

    ``errors`` is None when the error series was absent. ``buckets`` maps a
    histogram bucket's upper bound ``le`` in seconds (``math.inf`` for
    ``+Inf``) to its cumulative count; only the thresholds in use are needed,
    and an empty mapping means the histogram was absent. Without an ``+Inf``
    bucket the request counter stands in for the observations.
    ``start_time`` is the process start time (Unix seconds) when the source
    exports one: it tells a restart from an inconsistent read.
    """

    requests: float
    errors: float | None
    buckets: Mapping[float, float] = field(default_factory=dict)
    start_time: float | None = None


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
        """Each series' counters as integers in the judge's field layout (``ABSENT`` marks gaps)."""
        return {key: _vector(key, c, thresholds) for key, c in self.series.items()}

    def start_times(self) -> dict[str, float]:
        """The process start time of each series that has one."""
        return {k: c.start_time for k, c in self.series.items() if c.start_time is not None}

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
    errors = ABSENT if counters.errors is None else _integer(counters.errors, f"{where} errors")
    if thresholds and not counters.buckets:
        return (requests, errors, ABSENT, *(ABSENT for _ in thresholds))
    observed = requests
    if any(math.isinf(le) for le in counters.buckets):
        observed = _integer(_bucket(counters.buckets, math.inf, key), f"{where} bucket le=+Inf")
    below = (
        _integer(_bucket(counters.buckets, le, key), f"{where} bucket le={le:g}")
        for le in thresholds
    )
    return (requests, errors, observed, *below)


def counter_increase(previous: IntArray, current: IntArray) -> IntArray:
    """Increase of complete counter vectors (last axis: one series' fields).

    A series whose trial counters (requests and observations) both fell below
    half their previous values restarted: its current values are the increase.
    Any other decrease is an inconsistent read and gives no increase (the
    benchmark's batched path; the daemon's per-series path is :func:`reconcile`).
    """
    prev = np.asarray(previous, dtype=np.int64)
    cur = np.asarray(current, dtype=np.int64)
    restarted = _restarted(prev, cur)
    diff = cur - prev
    inconsistent = np.any(diff < 0, axis=-1) & ~restarted
    out = np.where(restarted[..., None], cur, diff)
    return np.where(inconsistent[..., None], 0, out)


def _restarted(prev: IntArray, cur: IntArray) -> IntArray:
    # the trial counters (never the outcomes) decide, so the rule keeps the e-processes valid
    return np.asarray(
        (2 * cur[..., REQUESTS] < prev[..., REQUESTS])
        & ((2 * cur[..., OBSERVED] < prev[..., OBSERVED]) | (prev[..., OBSERVED] == 0))
    )


@dataclass(frozen=True)
class Reconciled:
    """One version's poll after the rules of the module doc: the increase and what to remember."""

    increase: IntArray
    counters: dict[str, tuple[int, ...]]
    start_times: dict[str, float]
    restarted: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()  # present but incomplete or inconsistent: no evidence


def _complete(prev: Sequence[int] | None, cur: tuple[int, ...]) -> tuple[int, ...] | None:
    """``cur`` with an absent error series filled in, or None when the read is unusable."""
    filled = list(cur)
    if filled[ERRORS] == ABSENT:
        if prev is not None and prev[ERRORS] > 0:
            return None
        filled[ERRORS] = 0
    if ABSENT in filled:
        return None
    requests, errors, observed, *below = filled
    if errors > requests or any(b > observed for b in below):
        return None
    if any(a > b for a, b in itertools.pairwise(below)):
        return None
    return tuple(filled)


def reconcile(
    remembered: Mapping[str, Sequence[int]],
    start_times: Mapping[str, float],
    snapshot: CounterSnapshot,
    thresholds: Sequence[float],
) -> Reconciled:
    """One version's increase since the remembered counters, by the rules of the module doc."""
    fields = fields_for(thresholds)
    total = np.zeros(fields, dtype=np.int64)
    counters = {k: tuple(int(v) for v in values) for k, values in remembered.items()}
    starts = dict(start_times)
    restarted: list[str] = []
    skipped: list[str] = []
    for key, raw in snapshot.vectors(thresholds).items():
        prev = remembered.get(key)
        cur = _complete(prev, raw)
        if cur is None:
            skipped.append(key)
            continue
        start = snapshot.series[key].start_time
        old_start = start_times.get(key)
        if start is not None:
            starts[key] = start
        if prev is None:
            counters[key] = cur
            continue
        p = np.asarray(prev, dtype=np.int64)
        c = np.asarray(cur, dtype=np.int64)
        if start is not None and old_start is not None and start != old_start:
            if start > old_start and c[REQUESTS] < p[REQUESTS]:
                restarted.append(key)
                total += c
            # otherwise another process behind the same target: a new baseline
            counters[key] = cur
            continue
        diff = c - p
        if np.all(diff >= 0) and diff[ERRORS] <= diff[REQUESTS]:
            total += diff
            counters[key] = cur
        elif start is None and bool(_restarted(p, c)):
            restarted.append(key)
            total += c
            counters[key] = cur
        else:
            skipped.append(key)
    return Reconciled(total, counters, starts, tuple(restarted), tuple(skipped))


def metric_table(
    canary: IntArray, stable: IntArray, pairs: Sequence[tuple[int, int]] | None = None
) -> IntArray:
    """Per-metric rows ``(n, x, m, y)`` from both versions' increases (any leading shape).

    ``pairs`` gives, per latency metric, the index among the bucket fields of the
    stable's boundary and of the canary's (default: the same boundary each, in
    order). Events are clipped into ``[0, trials]``: a count that cannot be must
    not reach the likelihood.
    """
    c = np.asarray(canary, dtype=np.int64)
    s = np.asarray(stable, dtype=np.int64)
    if pairs is None:
        pairs = [(i, i) for i in range(c.shape[-1] - _FIXED_FIELDS)]
    stable_idx = [_FIXED_FIELDS + p[0] for p in pairs]
    canary_idx = [_FIXED_FIELDS + p[1] for p in pairs]

    def rows(v: IntArray, idx: list[int]) -> tuple[IntArray, IntArray]:
        trials = np.concatenate(
            [v[..., REQUESTS, None], np.repeat(v[..., OBSERVED, None], len(idx), -1)], -1
        )
        events = np.concatenate([v[..., ERRORS, None], v[..., OBSERVED, None] - v[..., idx]], -1)
        return trials, np.clip(events, 0, trials)

    n, x = rows(c, canary_idx)
    m, y = rows(s, stable_idx)
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

    @classmethod
    def from_table(cls, table: IntArray) -> PollCounts:
        """Counts from one poll's metric table (errors row, then one row per latency pair)."""
        rows = [[int(v) for v in row] for row in np.asarray(table)]
        n, x, m, y = rows[0]
        return cls(
            canary_requests=n,
            canary_errors=x,
            stable_requests=m,
            stable_errors=y,
            canary_observed=rows[1][0] if len(rows) > 1 else 0,
            stable_observed=rows[1][2] if len(rows) > 1 else 0,
            canary_slow=tuple(r[1] for r in rows[1:]),
            stable_slow=tuple(r[3] for r in rows[1:]),
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


def pick_pairs(
    histogram: Mapping[float, float],
    tolerance: float,
    *,
    quantiles: Sequence[float] = (),
    thresholds: Sequence[float] = (),
) -> tuple[tuple[float, float], ...]:
    """Bucket pairs ``(stable's le, canary's le)`` that test a latency slowdown exactly.

    A canary at most ``1 + tolerance`` times slower than the stable (in
    distribution) has ``P(canary > b_c) <= P(stable > b_c / (1 + tolerance))
    <= P(stable > b_s)`` whenever ``b_c >= (1 + tolerance) * b_s``: comparing the
    canary's exceedance of ``b_c`` with the stable's of ``b_s`` under odds ratio
    ``<= 1`` tests the slowdown with no model of the latency distribution. The
    bucket layout sets the tolerance actually tested, ``b_c / b_s - 1 >=
    tolerance``. ``thresholds`` are the stable's boundaries as given; for each
    of ``quantiles`` the stable's boundary nearest it and the one below are
    tried, and the pair with the smaller tested tolerance kept. ``histogram``
    is the stable's, read before the canary has data.
    """
    if tolerance == 0 and not quantiles:
        return tuple(sorted((b, b) for b in set(thresholds)))
    bounds = sorted(le for le in histogram if math.isfinite(le))
    if not bounds:
        raise ValueError("the stable's histogram has no finite buckets")

    def canary_le(b_s: float) -> float | None:
        want = b_s * (1 + tolerance) * (1 - 1e-9)
        return next((b for b in bounds if b >= want), None)

    def find(b_s: float) -> float:
        for b in bounds:
            if math.isclose(b, b_s, rel_tol=1e-9):
                return b
        raise ValueError(f"latency threshold {b_s:g}s is not a bucket boundary of the stable")

    pairs: list[tuple[float, float]] = []
    for given in thresholds:
        b_s = find(given)
        b_c = canary_le(b_s)
        if b_c is None:
            raise ValueError(
                f"no bucket boundary at or above {b_s * (1 + tolerance):g}s to test a "
                f"{tolerance:.0%} slowdown over {b_s:g}s"
            )
        pairs.append((b_s, b_c))
    if quantiles:
        nearest = pick_thresholds(histogram, quantiles)
        for b in nearest:
            i = bounds.index(b)
            options = [(b_s, canary_le(b_s)) for b_s in bounds[max(0, i - 1) : i + 1]]
            usable = [(b_s, b_c) for b_s, b_c in options if b_c is not None]
            if not usable:
                raise ValueError(
                    f"no bucket boundary to test a {tolerance:.0%} slowdown over {b:g}s"
                )
            pairs.append(min(usable, key=lambda p: (p[1] / p[0], -p[0])))
    return tuple(sorted(set(pairs)))
