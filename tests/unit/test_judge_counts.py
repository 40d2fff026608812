"""Raw counters to per-poll counts: differencing, resets, series coming and going, bad values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autocanary.judge import counts
from autocanary.judge.counts import CounterSnapshot, PollCounts, SeriesCounters

INF = math.inf


def snapshot(**series: tuple[float, float, float, float]) -> CounterSnapshot:
    """Series name -> (requests, errors, bucket le=0.25, bucket le=+Inf)."""
    return CounterSnapshot(
        {k: SeriesCounters(r, e, {0.25: b, INF: total}) for k, (r, e, b, total) in series.items()}
    )


def increase(before: CounterSnapshot, after: CounterSnapshot) -> list[int]:
    fields = counts.fields_for((0.25,))
    got = counts.version_increase(before.vectors((0.25,)), after.vectors((0.25,)), fields)
    return [int(v) for v in got]


def test_increase_sums_series() -> None:
    before = snapshot(a=(100, 2, 90, 100), b=(50, 1, 45, 50))
    after = snapshot(a=(160, 3, 140, 160), b=(80, 1, 70, 80))
    assert increase(before, after) == [90, 1, 90, 75]


def test_a_series_that_went_down_restarted_and_counts_its_new_value() -> None:
    before = snapshot(a=(1000, 20, 900, 1000), b=(500, 5, 450, 500))
    after = snapshot(a=(30, 1, 25, 30), b=(560, 6, 500, 560))
    assert increase(before, after) == [30 + 60, 1 + 1, 30 + 60, 25 + 50]


def test_reset_of_one_counter_resets_the_whole_series() -> None:
    # requests kept growing past the old value but errors dropped: the pod restarted
    before = snapshot(a=(100, 10, 90, 100))
    after = snapshot(a=(120, 2, 110, 120))
    assert increase(before, after) == [120, 2, 120, 110]


def test_new_series_count_in_full_and_gone_series_stop_counting() -> None:
    before = snapshot(old=(400, 4, 380, 400), gone=(300, 3, 290, 300))
    after = snapshot(old=(460, 5, 430, 460), new=(25, 1, 20, 25))
    assert increase(before, after) == [60 + 25, 1 + 1, 60 + 25, 50 + 20]


def test_float_counters_are_rounded_only_when_they_are_whole_counts() -> None:
    snap = CounterSnapshot.single(1234.0000000001, 7.0, {0.25: 1200.0, INF: 1234.0})
    assert snap.vectors((0.25,)) == {"": (1234, 7, 1234, 1200)}
    with pytest.raises(ValueError, match="not a whole count"):
        CounterSnapshot.single(12.5, 0.0).vectors(())


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_impossible_counter_values_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="finite count"):
        CounterSnapshot.single(bad, 0.0).vectors(())


def test_a_missing_threshold_bucket_is_refused() -> None:
    with pytest.raises(ValueError, match=r"le=0\.3"):
        CounterSnapshot.single(10, 0, {0.25: 5, INF: 10}).vectors((0.3,))


def test_without_an_inf_bucket_requests_stand_in_for_observations() -> None:
    assert CounterSnapshot.single(10, 1, {0.25: 8}).vectors((0.25,)) == {"": (10, 1, 10, 8)}


def test_counter_increase_is_vectorised() -> None:
    prev = np.array([[10, 1, 10, 9], [10, 1, 10, 9]])
    cur = np.array([[15, 1, 15, 13], [3, 0, 3, 3]])
    np.testing.assert_array_equal(counts.counter_increase(prev, cur), [[5, 0, 5, 4], [3, 0, 3, 3]])


def test_metric_table_rows_and_clipping() -> None:
    canary = np.array([100, 3, 98, 90, 97])  # thresholds 0.25 and 0.5
    stable = np.array([900, 9, 900, 820, 895])
    table = counts.metric_table(canary, stable)
    np.testing.assert_array_equal(table, [[100, 3, 900, 9], [98, 8, 900, 80], [98, 1, 900, 5]])
    skewed = counts.metric_table(np.array([5, 7, 5, 6]), np.array([5, 0, 5, 5]))
    np.testing.assert_array_equal(skewed, [[5, 5, 5, 0], [5, 0, 5, 0]])


def test_poll_counts_report_slow_requests_per_threshold() -> None:
    poll = PollCounts.from_increases([100, 3, 98, 90], [900, 9, 900, 820])
    assert (poll.canary_requests, poll.canary_errors, poll.canary_observed) == (100, 3, 98)
    assert poll.canary_slow == (8,)
    assert poll.stable_slow == (80,)


def test_thresholds_are_the_boundaries_nearest_the_stable_quantiles() -> None:
    histogram = {0.1: 500.0, 0.15: 791.0, 0.2: 917.0, 0.3: 986.0, 0.4: 997.0, INF: 1000.0}
    assert counts.pick_thresholds(histogram, (0.9, 0.99)) == (0.2, 0.3)
    assert counts.pick_thresholds(histogram, (0.98, 0.99)) == (0.3,)
    with pytest.raises(ValueError, match="no latency observations"):
        counts.pick_thresholds({0.1: 0.0, INF: 0.0}, (0.9,))


def test_snapshot_histogram_sums_series() -> None:
    snap = snapshot(a=(10, 0, 8, 10), b=(20, 1, 15, 20))
    assert snap.histogram() == {0.25: 23.0, INF: 30.0}
