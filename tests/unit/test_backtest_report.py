"""Reports: JSON that round-trips (NaN included), the timeline text, the variants table."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta

import pytest
from builders import T0, make_rollout

from autocanary.analysis.thresholds import CheckResult, IntervalVerdict
from autocanary.backtest.errors import BacktestInputError
from autocanary.backtest.evaluate import Silence
from autocanary.backtest.render import report_text, table_text, timeline_text
from autocanary.backtest.replay import replay
from autocanary.backtest.report import Release, Report, Variant
from autocanary.config.models import RolloutConfig
from autocanary.rollout.state import RolloutState

GOOD = Release("good", T0, T0 + timedelta(minutes=20), "v2", "v1")
BAD = Release("bad", T0 + timedelta(hours=1), T0 + timedelta(hours=1, minutes=20), "v3", "v2")
BASE, LOOSE = Variant("config"), Variant("loose", ("analysis.checks.errors.max=10%",))


class ErrorRates:
    """Error rates per canary version (v3 goes bad 90s in); judged against the rollout's max."""

    def __init__(self, rollout: RolloutConfig) -> None:
        self.max = rollout.analysis.checks[0].max or 0.0

    def evaluate(self, state: RolloutState, at: datetime) -> IntervalVerdict:
        bad = state.canary_version == "v3" and at - BAD.start > timedelta(seconds=90)
        value = 0.06 if bad else (math.nan if at - T0 < timedelta(seconds=31) else 0.01)
        verdict = "fail" if value > self.max else "pass"
        check = CheckResult("errors", verdict, value, None, f"<= {self.max:g}", f"{value:g}")
        return IntervalVerdict(verdict, at, (check,), 100.0, f"errors: {value:g}")

    def silences(self) -> list[Silence]:
        return []


@pytest.fixture
def report() -> Report:
    rollouts = {
        BASE: make_rollout(analysis={"failureLimit": 1}),
        LOOSE: make_rollout(analysis={"failureLimit": 1, "checks": [
            {"name": "errors", "template": "error-rate", "max": "10%"}
        ]}),
    }  # fmt: skip
    replays = tuple(
        replay(rollout, release, variant, ErrorRates(rollout), replicas=4)
        for release in (GOOD, BAD)
        for variant, rollout in rollouts.items()
    )
    return Report("web", "http://prometheus.test", 4, (GOOD, BAD), (BASE, LOOSE), replays)


def test_json_round_trips_including_nan(report: Report) -> None:
    text = report.to_json()
    data = json.loads(text)  # strict JSON: NaN is written as a string
    first_value = data["replays"][0]["timeline"][1]["checks"][0]["value"]
    assert first_value == "NaN"
    assert data["replays"][0]["release"]["canaryVersion"] == "v2"
    assert data["replays"][3]["outcome"] == {
        "decision": "promoted",
        "at": "2025-03-01T13:03:00Z",
        "step": 3,
        "reason": "all 3 steps passed their analysis",
    }
    back = Report.from_json(text)
    assert math.isnan(back.replays[0].timeline[1].checks[0].value or 0.0)
    # Equal apart from NaN (never equal to itself): compare the re-encoded text.
    assert back.to_json() == text
    assert back.replays[2:] == report.replays[2:]  # the bad release's values are all numbers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[]", "not a backtest report"),
        ('{"rollout": "web"}', "first at prometheus: Field required"),
        ("{nope", "not a backtest report"),
    ],
)
def test_other_json_is_refused(text: str, expected: str) -> None:
    with pytest.raises(BacktestInputError, match=expected):
        Report.from_json(text)


def test_table_shows_each_decision_per_release_and_variant(report: Report) -> None:
    assert table_text(report).splitlines() == [
        "release  canary/stable  config                            loose",
        "good     v2/v1          promoted at 12:03:00 (+3m)        promoted at 12:03:00 (+3m)",
        "bad      v3/v2          rolled back at 13:02:30 (+2m30s)  promoted at 13:03:00 (+3m)",
        "",
        "config: the rollout as configured",
        "loose: --set analysis.checks.errors.max=10%",
    ]


def test_timeline_lists_intervals_events_and_the_decision(report: Report) -> None:
    lines = timeline_text(report.replay("bad", "config")).splitlines()
    assert lines[0] == (
        "release bad: canary v3 vs stable v2, 2025-03-01T13:00:00+00:00 to "
        "2025-03-01T13:20:00+00:00 -- variant config"
    )
    assert lines[1].split() == [
        "time", "step", "(pods)", "requests", "errors", "<=", "0.01", "verdict"
    ]  # fmt: skip
    assert lines[2].split() == ["13:00:00", "1/3", "(1)"]
    assert lines[3].startswith("      > ReleaseDetected: new canary revision: canary v3")
    assert lines[4].split() == ["13:00:30", "1/3", "(1)", "100", "0.01", "ok", "pass"]
    fails = [line for line in lines if line.endswith("fail")]
    assert len(fails) == 2
    assert all(line.split()[4:6] == ["0.06", "FAIL"] for line in fails)
    assert lines[-2].startswith("      > RolledBack: errors: 0.06")
    assert lines[-1].startswith("  decision: rolled back at 13:")
    assert "(2 failed interval(s), failureLimit 1)" in lines[-1]


def test_report_text_has_every_timeline_and_the_table(report: Report) -> None:
    text = report_text(report)
    assert text.count("  decision: ") == 4
    assert text.endswith(table_text(report) + "\n")


def test_the_replay_lookup_names_what_exists(report: Report) -> None:
    with pytest.raises(KeyError, match=r"\('good', 'config'\)"):
        report.replay("good", "tight")
