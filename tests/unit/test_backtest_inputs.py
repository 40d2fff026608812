"""Backtest inputs: times, windows, the releases file, Prometheus durations, preflight queries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from builders import make_rollout

from autocanary import cli
from autocanary.adapters.prometheus_history import Retention, parse_prometheus_duration
from autocanary.backtest import preflight
from autocanary.backtest.errors import (
    BacktestInputError,
    NoDataError,
    RetentionError,
    UnknownVersionError,
)
from autocanary.backtest.report import Release
from autocanary.backtest.windows import load_releases, make_release, parse_time
from autocanary.promql import Sample

NOW = datetime(2025, 3, 2, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-03-01T14:00:00Z", datetime(2025, 3, 1, 14, tzinfo=UTC)),
        ("2025-03-01T15:00:00+01:00", datetime(2025, 3, 1, 14, tzinfo=UTC)),
        ("2025-03-01 14:00", datetime(2025, 3, 1, 14, tzinfo=UTC)),  # no zone: UTC
        ("1740837600", datetime(2025, 3, 1, 14, tzinfo=UTC)),
        (1740837600, datetime(2025, 3, 1, 14, tzinfo=UTC)),
        ("now", NOW),
        ("now-2h", NOW - timedelta(hours=2)),
        ("now - 1h30m", NOW - timedelta(minutes=90)),
    ],
)
def test_times_in_every_accepted_form(text: object, expected: datetime) -> None:
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "", "now-2x", "2025-13-01T00:00:00Z", True])
def test_unreadable_times_say_which_forms_work(text: object) -> None:
    with pytest.raises(ValueError, match=r"expected an ISO 8601 time|in 'now-2x'"):
        parse_time(text, NOW)


def release(start: str, end: str, canary: str = "v2", stable: str = "v1") -> Release:
    return make_release(None, start, end, canary_version=canary, stable_version=stable, now=NOW)


def test_a_release_is_named_after_its_canary_by_default() -> None:
    r = release("now-2h", "now-1h")
    assert (r.name, r.start, r.end) == ("v2", NOW - timedelta(hours=2), NOW - timedelta(hours=1))


@pytest.mark.parametrize(
    ("start", "end", "canary", "expected"),
    [
        ("now-1h", "now-2h", "v2", "--to must be later than --from"),
        ("now-1h", "now-1h", "v2", "--to must be later than --from"),
        ("now-1h", "2099-01-01T00:00:00Z", "v2", "the window ends in the future"),
        ("now-2h", "now-1h", "v1", "the canary and the stable have the same version 'v1'"),
        ("then", "now", "v2", "release 'v2': expected an ISO 8601 time"),
    ],
)
def test_unusable_windows_are_refused(start: str, end: str, canary: str, expected: str) -> None:
    with pytest.raises(BacktestInputError) as raised:
        release(start, end, canary)
    assert expected in str(raised.value)


def test_releases_file(tmp_path: Path) -> None:
    path = tmp_path / "releases.yaml"
    path.write_text(
        "- {name: good, from: 2025-03-01T12:00:00Z, to: '2025-03-01T12:30:00Z',"
        " canaryVersion: v2, stableVersion: v1}\n"
        "- from: now-3h\n  to: now-2h\n  canaryVersion: v3\n  stableVersion: v2\n"
    )
    good, third = load_releases(path, NOW)
    assert good == Release(
        "good", datetime(2025, 3, 1, 12, tzinfo=UTC), datetime(2025, 3, 1, 12, 30, tzinfo=UTC),
        "v2", "v1",
    )  # fmt: skip
    assert (third.name, third.start) == ("v3", NOW - timedelta(hours=3))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{}", "expected a non-empty list"),
        (
            "- {from: now-2h, to: now-1h, canaryVersion: v2}",
            "entry 1: stableVersion: Field required",
        ),
        (
            "- {from: now-2h, to: now-1h, canaryVersion: v2, stableVersion: v1, image: x}",
            "entry 1: image: Extra inputs are not permitted",
        ),
        (
            "- {from: now-2h, to: now-1h, canaryVersion: v2, stableVersion: v1}\n" * 2,
            "duplicate release name(s) ['v2']; give each a 'name'",
        ),
        ("- [unclosed", "is not valid YAML"),
    ],
)
def test_bad_releases_files_say_where(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "releases.yaml"
    path.write_text(text)
    with pytest.raises(BacktestInputError) as raised:
        load_releases(path, NOW)
    assert expected in str(raised.value)


def test_a_missing_releases_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(BacktestInputError, match=r"cannot read releases file .*nothing\.yaml"):
        load_releases(tmp_path / "nothing.yaml", NOW)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15d", timedelta(days=15)),
        ("100y", timedelta(days=36500)),
        ("1w2d", timedelta(days=9)),
        ("2h30m", timedelta(minutes=150)),
        ("0s", timedelta(0)),
        ("512MiB", None),
        ("", None),
    ],
)
def test_prometheus_durations(text: str, expected: timedelta | None) -> None:
    assert parse_prometheus_duration(text) == expected


# ---------------------------------------------------------------- preflight


def test_the_request_counter_of_each_source_under_the_rollouts_selector() -> None:
    probe = make_rollout()
    testpage = make_rollout(analysis={"source": "testpage"})
    assert preflight.requests_metric(probe) == 'probe_requests_total{target="web"}'
    assert preflight.requests_metric(testpage) == (
        'testpage_requests_total{path="/", namespace="shop"}'
    )
    r = Release("v2", NOW - timedelta(hours=1), NOW, "v2", "v1")
    assert preflight.versions_query(probe, r) == (
        'count by (version) (last_over_time(probe_requests_total{target="web"}[1h]))'
    )


class FakeHistory:
    """backtest's History protocol over fixed answers."""

    url = "http://prometheus.test"

    def __init__(self, versions: list[str], retention: Retention | None = None) -> None:
        self.versions = versions
        self._retention = retention
        self.asked: list[tuple[str, datetime]] = []

    def vector(self, promql: str, at: datetime) -> list[Sample]:
        self.asked.append((promql, at))
        return [({"version": v}, 3.0) for v in self.versions]

    def retention(self) -> Retention | None:
        return self._retention


WINDOW = Release("v3", NOW - timedelta(hours=3), NOW - timedelta(hours=2), "v3", "v2")


def test_versions_are_checked_over_the_whole_window() -> None:
    history = FakeHistory(["v3", "v2", "unknown"])
    assert preflight.check_versions(history, make_rollout(), WINDOW) == ["unknown", "v2", "v3"]
    assert history.asked == [(preflight.versions_query(make_rollout(), WINDOW), WINDOW.end)]


def test_a_version_that_matches_nothing_lists_those_that_exist() -> None:
    with pytest.raises(UnknownVersionError) as raised:
        preflight.check_versions(FakeHistory(["v1", "v2"]), make_rollout(), WINDOW)
    message = str(raised.value)
    assert "the canary version 'v3' matches no series of probe_requests_total" in message
    assert "versions there: v1, v2" in message


def test_a_window_without_traffic_names_the_query() -> None:
    with pytest.raises(NoDataError) as raised:
        preflight.check_versions(FakeHistory([]), make_rollout(), WINDOW)
    assert preflight.versions_query(make_rollout(), WINDOW) in str(raised.value)


def test_retention_shorter_than_the_window_is_refused() -> None:
    short = FakeHistory([], Retention("1h", timedelta(hours=1)))
    with pytest.raises(RetentionError, match="keeps samples for 1h"):
        preflight.check_retention(short, WINDOW, NOW)
    for fine in (
        Retention("15d", timedelta(days=15)),
        Retention("512MiB", None),  # size only: nothing to say about time
        None,  # not reported
    ):
        preflight.check_retention(FakeHistory([], fine), WINDOW, NOW)


# ---------------------------------------------------------------- the command line

WINDOW_ARGS = [
    "--from", "now-2h", "--to", "now-1h", "--canary-version", "v2", "--stable-version", "v1"
]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--from", "now-2h", "--canary-version", "v2"], "missing --to, --stable-version"),
        (["--releases", "r.yaml", "--from", "now-2h"], "--releases replaces --from"),
        ([*WINDOW_ARGS, "--rollout", "nope"], "no rollout 'nope' in the config; known: ['web']"),
        ([*WINDOW_ARGS, "--replicas", "0"], "--replicas must be at least 1"),
        ([*WINDOW_ARGS, "--prometheus", "localhost:9090"], "--prometheus: expected an http://"),
        ([*WINDOW_ARGS, "--set", "analysis.nope=1"], "unknown field 'nope' in analysis"),
    ],
)
def test_command_line_mistakes_are_said_before_asking_prometheus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    config = tmp_path / "autocanary.yaml"
    # Port 9 (discard) on 127.0.0.1: nothing is listening; these errors come first.
    config.write_text(
        "prometheus: {url: 'http://127.0.0.1:9'}\n"
        "rollouts:\n"
        "  - name: web\n    namespace: shop\n    stable: web\n"
        "    analysis: {checks: [{name: errors, template: error-rate, max: 1%}]}\n"
    )
    code = cli.main(["backtest", "-c", str(config), *args])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert expected in err
