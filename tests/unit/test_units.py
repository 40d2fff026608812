"""Durations and percentages as written in configs."""

from __future__ import annotations

from datetime import timedelta

import pytest

from autocanary.config.units import format_duration, parse_duration, parse_percent


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("2m", timedelta(minutes=2)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("500ms", timedelta(milliseconds=500)),
        ("1.5s", timedelta(seconds=1.5)),
        ("1d", timedelta(days=1)),
        (" 10m ", timedelta(minutes=10)),
        ("0s", timedelta(0)),
        (45, timedelta(seconds=45)),
        (0.25, timedelta(milliseconds=250)),
        (timedelta(seconds=3), timedelta(seconds=3)),
    ],
)
def test_parse_duration_accepts(text: object, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "bad", ["", "30", "s", "30 s", "1h 30m", "-5s", "5x", "5s5", True, -1, None, [1], "ten seconds"]
)
def test_parse_duration_rejects_with_expected_forms(bad: object) -> None:
    with pytest.raises(ValueError, match=r"duration"):
        parse_duration(bad)


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 1e20, "99999999999999d", "36501d"])
def test_parse_duration_rejects_infinite_and_absurd_values(bad: object) -> None:
    # These used to escape as OverflowError (not a ValueError), crashing config loading.
    with pytest.raises(ValueError, match=r"at most 36500d"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(seconds=30), "30s"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(hours=1), "1h"),
        (timedelta(days=1), "24h"),
        (timedelta(milliseconds=1500), "1s500ms"),
        (timedelta(0), "0s"),
        (timedelta(seconds=-5), "0s"),
    ],
)
def test_format_duration_is_a_promql_duration(delta: timedelta, text: str) -> None:
    assert format_duration(delta) == text


@pytest.mark.parametrize("text", ["30s", "1h30m", "1s500ms", "2h5m7s"])
def test_format_parse_round_trip(text: str) -> None:
    assert format_duration(parse_duration(text)) == text


@pytest.mark.parametrize(
    ("text", "fraction"),
    [("10%", 0.1), ("2.5%", 0.025), (" 100 % ", 1.0), ("0%", 0.0), ("150%", 1.5)],
)
def test_parse_percent(text: str, fraction: float) -> None:
    assert parse_percent(text) == pytest.approx(fraction)


@pytest.mark.parametrize("bad", ["10", "-5%", "%", "ten%", 10, 0.1, None])
def test_parse_percent_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match=r"expected a percentage like 10%"):
        parse_percent(bad)
