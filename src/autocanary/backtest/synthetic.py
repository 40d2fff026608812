"""Synthetic probe history: OpenMetrics with timestamps, for trying backtest without a cluster.

It writes what ``autocanary probe`` would have exported, sample by sample, for
versions with a known request rate, error fraction and latency, each of which
may change at a known time (a bad release). Loaded into a fresh Prometheus data
directory with ``promtool tsdb create-blocks-from openmetrics FILE DIR``, it
gives backtest real history to replay; the tests and the worked example in
README section "Tuning thresholds with backtest" use it::

    python -m autocanary.backtest.synthetic demo.om
    promtool tsdb create-blocks-from openmetrics demo.om data/
    prometheus --storage.tsdb.path=data/ --storage.tsdb.retention.time=100y ...

Counters are whole requests; latencies follow a log-normal distribution around
the given median, counted into the probe's histogram buckets.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from autocanary.latency import LATENCY_BUCKETS

REQUESTS = "probe_requests"
DURATION = "probe_request_duration_seconds"
_SCRAPE = 'job="probe",instance="probe:9102"'  # labels a Prometheus scrape adds
_SIGMA = 0.5  # log-normal spread of latencies: p99 is about 3.2 x the median


@dataclass(frozen=True)
class TrafficChange:
    """From ``at`` on, a version answers with this error fraction and/or median latency."""

    at: datetime
    error_fraction: float | None = None
    latency: float | None = None


@dataclass(frozen=True)
class VersionTraffic:
    """Probe traffic answered by one version between ``start`` and ``end``."""

    version: str
    start: datetime
    end: datetime
    rate: float = 5.0  # requests per second
    error_fraction: float = 0.01  # share answered 503
    latency: float = 0.05  # median seconds
    changes: tuple[TrafficChange, ...] = ()

    def at(self, t: datetime) -> tuple[float, float]:
        """The (error fraction, median latency) in force at ``t``."""
        errors, latency = self.error_fraction, self.latency
        for change in sorted(self.changes, key=lambda c: c.at):
            if change.at < t:
                errors = errors if change.error_fraction is None else change.error_fraction
                latency = latency if change.latency is None else change.latency
        return errors, latency


def _cdf(le: float, median: float) -> float:
    """Share of log-normal latencies (median ``median``) at or below ``le``."""
    return 0.5 * (1 + math.erf(math.log(le / median) / (_SIGMA * math.sqrt(2))))


def _float(value: float) -> str:
    return "+Inf" if math.isinf(value) else repr(float(value))


@dataclass
class _Series:
    """One version's cumulative counters, advanced step by step."""

    ok: float = 0.0
    errors: float = 0.0
    latency_sum: float = 0.0
    buckets: list[float] = field(default_factory=lambda: [0.0] * len(LATENCY_BUCKETS))

    def advance(self, requests: float, error_fraction: float, median: float) -> None:
        self.errors += requests * error_fraction
        self.ok += requests * (1 - error_fraction)
        self.latency_sum += requests * median * math.exp(_SIGMA**2 / 2)  # log-normal mean
        for i, le in enumerate(LATENCY_BUCKETS):
            self.buckets[i] += requests * _cdf(le, median)


def _times(traffic: VersionTraffic, step: timedelta) -> Iterator[datetime]:
    t = traffic.start
    while t <= traffic.end:
        yield t
        t += step


def openmetrics(
    target: str, traffic: Sequence[VersionTraffic], step: timedelta = timedelta(seconds=15)
) -> str:
    """The OpenMetrics text (``# EOF`` included) of ``traffic`` sampled every ``step``."""
    counters: list[str] = []
    histograms: list[str] = []
    for version in traffic:
        rows: dict[str, list[str]] = {}
        series = _Series()
        previous: datetime | None = None
        for t in _times(version, step):
            if previous is not None:
                errors, median = version.at(t)
                series.advance(version.rate * (t - previous).total_seconds(), errors, median)
            previous = t
            ts = f"{t.timestamp():.3f}"
            base = f'{_SCRAPE},target="{target}",version="{version.version}"'
            total = math.floor(series.ok) + math.floor(series.errors)
            for code, count in (("200", series.ok), ("503", series.errors)):
                key = f'{REQUESTS}_total{{{base},code="{code}",reason=""}}'
                rows.setdefault(key, []).append(f"{key} {math.floor(count)} {ts}")
            for le, count in (*zip(LATENCY_BUCKETS, series.buckets, strict=True), (math.inf, 0)):
                value = total if math.isinf(le) else min(math.floor(count), total)
                key = f'{DURATION}_bucket{{{base},le="{_float(le)}"}}'
                rows.setdefault(key, []).append(f"{key} {value} {ts}")
            for suffix, value_text in (("count", str(total)), ("sum", f"{series.latency_sum:.6f}")):
                key = f"{DURATION}_{suffix}{{{base}}}"
                rows.setdefault(key, []).append(f"{key} {value_text} {ts}")
        for key, lines in rows.items():
            (counters if key.startswith(REQUESTS) else histograms).extend(lines)
    return "\n".join(
        [
            f"# HELP {REQUESTS} Requests finished, by version and status code.",
            f"# TYPE {REQUESTS} counter",
            *counters,
            f"# HELP {DURATION} Latency from intended send time to the end of the answer.",
            f"# TYPE {DURATION} histogram",
            *histograms,
            "# EOF",
            "",
        ]
    )


#: The demo history of the README's backtest example: target ``shop``; v1 stable until v2, a good
#: release at 12:00, is promoted; v3, released at 14:00, starts failing 6% at 14:03.
DEMO_DAY = datetime(2025, 3, 1, tzinfo=UTC)


def demo_traffic(day: datetime = DEMO_DAY) -> list[VersionTraffic]:
    """Three versions on ``day``: a good release (v2 at 12:00) and a bad one (v3 at 14:00)."""

    def at(hour: int, minute: int = 0) -> datetime:
        return day + timedelta(hours=hour, minutes=minute)

    return [
        VersionTraffic("v1", at(11, 30), at(12, 40), rate=20, latency=0.05),
        VersionTraffic("v2", at(12, 0), at(15, 0), rate=20, latency=0.05),
        VersionTraffic(
            "v3",
            at(14, 0),
            at(14, 40),
            rate=10,
            latency=0.05,
            changes=(TrafficChange(at(14, 3), error_fraction=0.06),),
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Write the demo history (or ``--target``'s) as OpenMetrics to a file."""
    parser = argparse.ArgumentParser(
        prog="python -m autocanary.backtest.synthetic",
        description="Write demo probe history as OpenMetrics, for promtool tsdb "
        "create-blocks-from openmetrics.",
    )
    parser.add_argument("output", type=Path, help="file to write, e.g. demo.om")
    parser.add_argument("--target", default="shop", help="the probe target label (rollout name)")
    args = parser.parse_args(argv)
    args.output.write_text(openmetrics(args.target, demo_traffic()), encoding="utf-8")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
