"""Each rollout's tick phase: stable per name, spread over the interval, kept after moved runs."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from autocanary.daemon import schedule

INTERVAL = timedelta(seconds=30)
NOW = datetime(2026, 5, 1, 12, 0, 7, 123456, tzinfo=UTC)


def _offset(when: datetime) -> float:
    return when.timestamp() % INTERVAL.total_seconds()


def test_the_phase_is_a_function_of_the_name_alone() -> None:
    assert schedule.phase("checkout", INTERVAL) == schedule.phase("checkout", INTERVAL)
    assert schedule.phase("checkout", INTERVAL) != schedule.phase("checkout-2", INTERVAL)
    assert 0 <= schedule.phase("checkout", INTERVAL) < 30


def test_phases_of_many_rollouts_spread_evenly_over_the_interval() -> None:
    seconds = Counter(int(schedule.phase(f"app{i}", INTERVAL)) for i in range(30_000))

    # 1,000 expected per one-second slot; a uniform spread stays well within ±15%.
    assert set(seconds) == set(range(30))
    assert min(seconds.values()) > 850
    assert max(seconds.values()) < 1150


def test_ticks_fall_on_the_phase_one_interval_apart() -> None:
    first = schedule.next_tick("checkout", INTERVAL, NOW)
    second = schedule.next_tick("checkout", INTERVAL, first)

    assert NOW < first <= NOW + INTERVAL
    assert second - first == INTERVAL
    assert abs(_offset(first) - schedule.phase("checkout", INTERVAL)) < 1e-3


def test_a_tick_exactly_at_its_phase_time_is_followed_by_the_next_one() -> None:
    at = schedule.next_tick("checkout", INTERVAL, NOW)

    assert schedule.next_tick("checkout", INTERVAL, at) == at + INTERVAL


def test_the_trigger_returns_to_the_phase_after_a_run_moved_earlier() -> None:
    trigger = schedule.PhasedTrigger("checkout", INTERVAL)
    on_phase = trigger.get_next_fire_time(None, NOW)
    moved = on_phase - timedelta(seconds=11)  # a requeue or a watch event ran it early

    after = trigger.get_next_fire_time(moved, NOW)

    assert after == on_phase
    assert trigger.get_next_fire_time(after, after) == on_phase + INTERVAL


def test_the_trigger_first_fires_at_the_next_phase_time_from_now() -> None:
    trigger = schedule.PhasedTrigger("checkout", INTERVAL)

    first = trigger.get_next_fire_time(None, NOW)

    assert first == schedule.next_tick("checkout", INTERVAL, NOW - timedelta(microseconds=1))
    assert NOW <= first < NOW + INTERVAL


def test_first_ticks_start_at_once_for_a_few_rollouts_and_spread_for_many() -> None:
    one = schedule.first_tick("checkout", INTERVAL, 1, NOW)
    many = [schedule.first_tick(f"app{i}", INTERVAL, 10_000, NOW) for i in range(10_000)]

    assert NOW <= one <= NOW + schedule.STARTUP_SPREAD_PER_ROLLOUT
    assert all(NOW <= t < NOW + INTERVAL for t in many)
    # Spread over the whole interval (at 5 ms per rollout, 10,000 would take 50 s).
    assert max(many) - min(many) > INTERVAL * 0.99


def test_the_next_tick_is_strictly_later_however_close_to_a_phase_time() -> None:
    # APScheduler asks again from each answer until one is in the future: an answer
    # equal to the question (a float rounded to the microsecond) would never end.
    at = schedule.next_tick("checkout", INTERVAL, NOW)
    for nudge in range(-3, 4):
        after = at + timedelta(microseconds=nudge)
        later = schedule.next_tick("checkout", INTERVAL, after)
        assert after < later <= after + INTERVAL
    for i in range(10_000):
        after = NOW + timedelta(microseconds=7919 * i)
        assert schedule.next_tick(f"app{i}", INTERVAL, after) > after
