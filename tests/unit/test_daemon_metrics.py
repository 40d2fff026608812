"""The daemon's own metrics: what a tick adds per rollout stays small at many rollouts."""

from __future__ import annotations

from prometheus_client import generate_latest

from autocanary.daemon.metrics import DaemonMetrics


def test_tick_durations_are_one_histogram_and_a_gauge_per_rollout() -> None:
    metrics = DaemonMetrics()
    for name, seconds in (("web", 0.02), ("api", 0.3), ("web", 0.07)):
        metrics.observe_tick(name, seconds)

    text = generate_latest(metrics.registry).decode()

    # Every rollout's ticks in one histogram: its 14 series per rollout were most of
    # /metrics at 10,000 rollouts (bench/metrics_cost.py).
    assert "autocanary_tick_duration_seconds_count 3.0" in text
    assert 'autocanary_tick_duration_seconds_bucket{le="0.05"} 1.0' in text
    assert 'autocanary_tick_duration_seconds_bucket{le="0.1"} 2.0' in text
    assert "rollout=" not in "".join(
        line for line in text.splitlines() if line.startswith("autocanary_tick_duration")
    )
    # Which rollout is slow: its last tick's duration.
    assert 'autocanary_last_tick_duration_seconds{rollout="web"} 0.07' in text
    assert 'autocanary_last_tick_duration_seconds{rollout="api"} 0.3' in text


def test_a_forgotten_rollout_leaves_no_series_and_the_others_stay() -> None:
    metrics = DaemonMetrics()
    for name in ("web", "api"):
        metrics.set_phase(name, "shop", "progressing")
        metrics.observe_tick(name, 0.1)
        metrics.check_results.labels(name, "error-rate", "pass").inc()
        metrics.rollout_error.labels(name, "shop", "transient").set(1)
        metrics.sequential_evalue.labels(name, "errors", "harm").set(2.0)

    metrics.forget("web")

    text = generate_latest(metrics.registry).decode()
    assert 'rollout="web"' not in text
    for series in (
        'autocanary_rollout_phase{namespace="shop",phase="progressing",rollout="api"} 1.0',
        'autocanary_check_results_total{check="error-rate",rollout="api",verdict="pass"} 1.0',
        'autocanary_rollout_error{kind="transient",namespace="shop",rollout="api"} 1.0',
        'autocanary_sequential_evalue{hypothesis="harm",metric="errors",rollout="api"} 2.0',
    ):
        assert series in text
    # The daemon-wide histogram keeps every tick, the forgotten rollout's included.
    assert "autocanary_tick_duration_seconds_count 2.0" in text
