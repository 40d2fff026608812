"""Histogram buckets for web request latencies, shared by testpage and probe.

One set of boundaries for both keeps their quantiles comparable. They run from
1ms (in-cluster hops) to 10s (far beyond any sane timeout), denser around
100ms-500ms where latency faults and release regressions usually land, so
``histogram_quantile`` interpolates over narrow buckets there.
"""

from __future__ import annotations

LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.25,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
)
