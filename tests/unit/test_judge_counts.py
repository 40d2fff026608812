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
    first = counts.reconcile({}, {}, before, (0.25,))
    got = counts.reconcile(first.counters, first.start_times, after, (0.25,))
    return [int(v) for v in got.increase]


def test_increase_sums_series() -> None:
    before = snapshot(a=(100, 2, 90, 100), b=(50, 1, 45, 50))
    after = snapshot(a=(160, 3, 140, 160), b=(80, 1, 70, 80))
    assert increase(before, after) == [90, 1, 90, 75]


def test_a_series_whose_counters_all_went_down_restarted_and_counts_its_new_value() -> None:
    before = snapshot(a=(1000, 20, 900, 1000), b=(500, 5, 450, 500))
    after = snapshot(a=(30, 1, 25, 30), b=(560, 6, 500, 560))
    assert increase(before, after) == [30 + 60, 1 + 1, 30 + 60, 25 + 50]


def test_a_restart_shown_by_the_process_start_time_counts_the_new_values() -> None:
    # a real restart: the start time moved forward and the counters began again
    before = CounterSnapshot({"a": SeriesCounters(1000, 20, {0.25: 900, INF: 1000}, 100.0)})
    after = CounterSnapshot({"a": SeriesCounters(40, 2, {0.25: 35, INF: 40}, 500.0)})
    first = counts.reconcile({}, {}, before, (0.25,))
    got = counts.reconcile(first.counters, first.start_times, after, (0.25,))
    assert got.increase.tolist() == [40, 2, 40, 35]
    assert got.restarted == ("a",)
    assert got.start_times == {"a": 500.0}


def test_a_decrease_without_a_restart_is_skipped_and_never_counted_twice() -> None:
    # two Prometheus replicas a scrape apart: the second read is a little behind
    ahead = snapshot(a=(1000, 10, 950, 1000))
    behind = snapshot(a=(990, 10, 941, 990))
    later = snapshot(a=(1100, 11, 1045, 1100))
    first = counts.reconcile({}, {}, ahead, (0.25,))
    skipped = counts.reconcile(first.counters, first.start_times, behind, (0.25,))
    assert skipped.increase.tolist() == [0, 0, 0, 0]
    assert skipped.skipped == ("a",)
    assert skipped.counters["a"] == (1000, 10, 1000, 950)  # the higher read is kept
    on = counts.reconcile(skipped.counters, skipped.start_times, later, (0.25,))
    assert on.increase.tolist() == [100, 1, 100, 95]


def test_errors_going_down_while_requests_grow_is_no_restart() -> None:
    # only the trial counters decide a restart; this read is inconsistent and skipped
    before = snapshot(a=(100, 10, 90, 100))
    after = snapshot(a=(120, 2, 110, 120))
    assert increase(before, after) == [0, 0, 0, 0]


def test_a_series_missing_for_a_poll_and_back_counts_only_its_increase() -> None:
    """Issue 12: a series absent from one poll was counted in full when it came back."""
    t0 = snapshot(a=(12_000, 120, 11_000, 12_000), b=(5_000, 50, 4_600, 5_000))
    gap = snapshot(b=(5_100, 51, 4_690, 5_100))  # a's scrape failed
    back = snapshot(a=(12_600, 126, 11_550, 12_600), b=(5_200, 52, 4_780, 5_200))
    first = counts.reconcile({}, {}, t0, (0.25,))
    during = counts.reconcile(first.counters, first.start_times, gap, (0.25,))
    assert during.increase.tolist() == [100, 1, 100, 90]
    assert "a" in during.counters  # remembered while absent
    after = counts.reconcile(during.counters, during.start_times, back, (0.25,))
    assert after.increase.tolist() == [600 + 100, 6 + 1, 600 + 100, 550 + 90]


def test_an_error_series_missing_while_requests_are_present_is_skipped_not_zero() -> None:
    """Issue 12: read as 0 errors (a false PROMOTE), then as a reset (a harm e-value of 3e26)."""
    had_errors = CounterSnapshot({"a": SeriesCounters(12_000, 120, {0.25: 11_000, INF: 12_000})})
    missing = CounterSnapshot({"a": SeriesCounters(12_600, None, {0.25: 11_550, INF: 12_600})})
    back = CounterSnapshot({"a": SeriesCounters(13_200, 132, {0.25: 12_100, INF: 13_200})})
    first = counts.reconcile({}, {}, had_errors, (0.25,))
    during = counts.reconcile(first.counters, first.start_times, missing, (0.25,))
    assert during.increase.tolist() == [0, 0, 0, 0]
    assert during.skipped == ("a",)
    after = counts.reconcile(during.counters, during.start_times, back, (0.25,))
    assert after.increase.tolist() == [1200, 12, 1200, 1100]
    assert after.restarted == ()


def test_an_error_series_not_yet_created_reads_as_no_errors() -> None:
    # the probe creates a version's error series with its first error
    clean = CounterSnapshot({"a": SeriesCounters(100, None, {0.25: 90, INF: 100})})
    first_error = CounterSnapshot({"a": SeriesCounters(150, 1, {0.25: 135, INF: 150})})
    first = counts.reconcile({}, {}, clean, (0.25,))
    assert first.counters["a"] == (100, 0, 100, 90)
    got = counts.reconcile(first.counters, first.start_times, first_error, (0.25,))
    assert got.increase.tolist() == [50, 1, 50, 45]


def test_an_ha_pair_behind_one_address_is_rebased_not_counted() -> None:
    """Two processes scraped through one Service address: their counters alternate."""
    a = CounterSnapshot({"svc": SeriesCounters(50_000, 500, {0.25: 45_000, INF: 50_000}, 100.0)})
    b = CounterSnapshot({"svc": SeriesCounters(30_000, 300, {0.25: 27_000, INF: 30_000}, 50.0)})
    a2 = CounterSnapshot({"svc": SeriesCounters(50_100, 501, {0.25: 45_090, INF: 50_100}, 100.0)})
    state = counts.reconcile({}, {}, a, (0.25,))
    total = np.zeros(4, dtype=np.int64)
    for snap in (b, a2, b, a2):
        state = counts.reconcile(state.counters, state.start_times, snap, (0.25,))
        total += state.increase
    # a start time that changes without the counters starting over is another process:
    # re-based each time, never counted (the judge waits; it does not make counts up)
    assert total.tolist() == [0, 0, 0, 0]


def test_new_series_are_a_baseline_and_gone_series_stop_counting() -> None:
    before = snapshot(old=(400, 4, 380, 400), gone=(300, 3, 290, 300))
    after = snapshot(old=(460, 5, 430, 460), new=(25_000, 100, 20_000, 25_000))
    assert increase(before, after) == [60, 1, 60, 50]


def test_inconsistent_series_are_skipped() -> None:
    bad = snapshot(a=(100, 120, 90, 100))  # more errors than requests: not one scrape
    got = counts.reconcile({}, {}, bad, (0.25,))
    assert got.skipped == ("a",)
    assert got.counters == {}
    no_histogram = CounterSnapshot({"a": SeriesCounters(100, 1, {})})
    assert counts.reconcile({}, {}, no_histogram, (0.25,)).skipped == ("a",)


def test_float_counters_are_rounded_only_when_they_are_whole_counts() -> None:
    snap = CounterSnapshot.single(1234.0000000001, 7.0, {0.25: 1200.0, INF: 1234.0})
    assert snap.vectors((0.25,)) == {"": (1234, 7, 1234, 1200)}
    assert CounterSnapshot({"a": SeriesCounters(5, None)}).vectors(()) == {"a": (5, -1, 5)}
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
    prev = np.array([[10, 1, 10, 9], [10, 1, 10, 9], [10, 2, 10, 9]])
    cur = np.array([[15, 1, 15, 13], [3, 0, 3, 3], [12, 1, 12, 10]])
    np.testing.assert_array_equal(
        counts.counter_increase(prev, cur), [[5, 0, 5, 4], [3, 0, 3, 3], [0, 0, 0, 0]]
    )


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


def test_metric_table_pairs_the_stable_and_canary_boundaries() -> None:
    canary = np.array([100, 3, 100, 90, 97])  # bucket fields: 0.25, 0.3
    stable = np.array([900, 9, 900, 820, 880])
    table = counts.metric_table(canary, stable, [(0, 1)])  # stable > 0.25 vs canary > 0.3
    np.testing.assert_array_equal(table, [[100, 3, 900, 9], [100, 3, 900, 80]])


def test_bucket_pairs_test_the_slowdown_with_the_tightest_available_ratio() -> None:
    hist = {0.15: 700.0, 0.2: 900.0, 0.25: 960.0, 0.3: 986.0, 0.4: 997.0, INF: 1000.0}
    assert counts.pick_pairs(hist, 0.2, quantiles=(0.9, 0.99)) == ((0.2, 0.25), (0.25, 0.3))
    assert counts.pick_pairs(hist, 0.2, thresholds=(0.2,)) == ((0.2, 0.25),)
    assert counts.pick_pairs(hist, 0.0, thresholds=(0.3,)) == ((0.3, 0.3),)
    with pytest.raises(ValueError, match="not a bucket boundary"):
        counts.pick_pairs(hist, 0.2, thresholds=(0.22,))


def test_snapshot_histogram_sums_series() -> None:
    snap = snapshot(a=(10, 0, 8, 10), b=(20, 1, 15, 20))
    assert snap.histogram() == {0.25: 23.0, INF: 30.0}
