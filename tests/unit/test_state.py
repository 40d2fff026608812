"""The persisted rollout state: round trip and corrupt annotations."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from builders import pod_template

from autocanary.config.models import AlertKind
from autocanary.errors import StateCorrupt
from autocanary.judge import CounterSnapshot, JudgeState, SequentialConfig, initial
from autocanary.rollout.state import (
    MAX_VERDICTS,
    SCHEMA_VERSION,
    Notice,
    Reason,
    RolloutState,
    VerdictRecord,
    dumps,
    essentials,
    loads,
)

T = datetime(2025, 3, 1, 12, 0, 30, 123456, tzinfo=UTC)
#: Evidence at release start, on a small grid: enough to check it travels typed.
JUDGE = initial(
    SequentialConfig(grid_points=4),
    CounterSnapshot.single(100, 1),
    CounterSnapshot.single(900, 9),
)


def full_state() -> RolloutState:
    return RolloutState(
        phase="progressing",
        revision="abc123def456",
        stable_revision="0123456789ab",
        canary_version="2.0",
        stable_version="1.0",
        stable_template=pod_template(),
        total=10,
        step=2,
        stage="analysing",
        step_started_at=T,
        ready_at=T + timedelta(seconds=20),
        not_ready_since=None,
        not_ready_seconds=42.5,
        last_analysis_at=T + timedelta(minutes=1),
        step_passes=2,
        failures=1,
        inconclusive=1,
        started_at=T - timedelta(minutes=10),
        rolled_back_revision="fedcba987654",
        message="analysing step 3/4 (5 canary pods)",
        verdicts=(
            VerdictRecord(
                at=T,
                step=2,
                verdict="pass",
                reason="all checks passed",
                checks={"errors": {"verdict": "pass", "value": 0.001, "threshold": "<= 0.01"}},
            ),
            VerdictRecord(at=T + timedelta(seconds=30), step=2, verdict="inconclusive", reason="x"),
        ),
        judge=JUDGE,
    )


def test_round_trip_of_a_full_state() -> None:
    state = full_state()
    assert loads(dumps(state)) == state


def test_round_trip_of_the_default_state() -> None:
    assert loads(dumps(RolloutState())) == RolloutState()


def test_dumps_is_compact_sorted_json_with_the_schema_version() -> None:
    text = dumps(full_state())
    data = json.loads(text)
    assert data["schema"] == SCHEMA_VERSION
    assert list(data) == sorted(data)
    assert ", " not in text
    assert data["step_started_at"] == "2025-03-01T12:00:30.123456+00:00"
    assert data["verdicts"][0]["checks"]["errors"]["value"] == 0.001


def test_datetimes_are_stored_in_utc_and_read_back_aware() -> None:
    local = datetime(2025, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    state = loads(dumps(RolloutState(started_at=local)))
    assert state.started_at == local
    assert state.started_at is not None
    assert state.started_at.utcoffset() == timedelta(0)


def test_naive_timestamps_are_read_as_utc() -> None:
    data = {"schema": SCHEMA_VERSION, "started_at": "2025-03-01T12:00:00"}
    assert loads(json.dumps(data)).started_at == datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def test_missing_fields_take_their_defaults() -> None:
    state = loads(json.dumps({"schema": SCHEMA_VERSION, "phase": "succeeded"}))
    assert state == RolloutState(phase="succeeded")


def test_with_verdict_keeps_the_most_recent() -> None:
    state = RolloutState()
    for i in range(MAX_VERDICTS + 3):
        state = RolloutState(
            verdicts=state.with_verdict(VerdictRecord(at=T, step=i, verdict="pass", reason=""))
        )
    assert len(state.verdicts) == MAX_VERDICTS
    assert [v.step for v in state.verdicts] == list(range(3, MAX_VERDICTS + 3))


NOTICE = Notice(
    id="web.abc123def456.1.1740830430123",
    reason=Reason.ROLLED_BACK,
    message="error-rate: 0.1 is above the maximum 0.02",
    kind=AlertKind.ROLLED_BACK,
    warning=True,
    at=T,
    revision="abc123def456",
    canary_version="2.0",
    stable_version="1.0",
    step=3,
    sinks=("oncall", "alertmanager"),
    checks=({"name": "error-rate", "verdict": "fail", "value": 0.1, "threshold": "<= 0.02"},),
)
NOTICE_JSON = json.loads(dumps(RolloutState(pending=(NOTICE,))))["pending"][0]


def test_pending_notices_round_trip_and_are_done_when_told() -> None:
    state = dataclasses.replace(full_state(), pending=(NOTICE,), notices=7)
    assert loads(dumps(state)) == state
    assert not NOTICE.done
    assert dataclasses.replace(NOTICE, event=False, sinks=()).done


def test_essentials_keep_what_restores_capacity_and_the_records_own_notices() -> None:
    record = RolloutState(pending=(NOTICE,), notices=4, corrupt_seen="d1")
    kept = essentials(full_state(), record)
    assert (kept.phase, kept.total, kept.revision) == ("progressing", 10, "abc123def456")
    assert kept.stable_template == pod_template()
    assert (kept.pending, kept.notices, kept.corrupt_seen) == ((NOTICE,), 4, "d1")
    assert (kept.step, kept.verdicts, kept.judge) == (0, (), None)
    assert loads(dumps(kept)) == kept


def corrupt(**changes: Any) -> str:
    data = json.loads(dumps(full_state()))
    data.update(changes)
    return json.dumps(data)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"not JSON"),
        ("{phase: idle}", r"not JSON"),
        ("[1, 2]", r"not a JSON object"),
        ('"idle"', r"not a JSON object"),
        (json.dumps({"phase": "idle"}), r"schema None; this daemon reads schema 1"),
        (corrupt(schema=2), r"schema 2"),
        (corrupt(surprise=1), r"^surprise: unknown field$"),
        (corrupt(phase="dancing"), r"^phase: input should be 'idle', .* got 'dancing'$"),
        (corrupt(stage="bogus"), r"^stage: input should be 'waitingReady' or 'analysing'"),
        (
            corrupt(started_at="yesterday"),
            r"^started_at: input should be a valid datetime, .*got 'yesterday'$",
        ),
        (corrupt(ready_at=1700000000), r"^ready_at: input should be a valid datetime, got 17"),
        (corrupt(total="10"), r"^total: input should be a valid integer, got '10'$"),
        (corrupt(step=-1), r"^step: input should be greater than or equal to 0, got -1$"),
        (corrupt(failures=True), r"^failures: input should be a valid integer, got True$"),
        (corrupt(revision=5), r"^revision: input should be a valid string, got 5$"),
        (corrupt(stable_template=[1]), r"^stable_template: input should be an object, got \[1\]$"),
        (corrupt(verdicts=5), r"^verdicts: input should be a valid array, got 5$"),
        (corrupt(verdicts=["pass"]), r"^verdicts\[0\]: input should be an object, got 'pass'$"),
        (
            corrupt(verdicts=[{"step": 0, "verdict": "pass", "reason": ""}]),
            r"^verdicts\[0\].at: field required$",
        ),
        (
            corrupt(verdicts=[{"at": None, "step": 0, "verdict": "pass", "reason": ""}]),
            r"^verdicts\[0\].at: input should be a valid datetime, got None$",
        ),
        (
            corrupt(verdicts=[{"at": "noon", "step": 0, "verdict": "pass", "reason": ""}]),
            r"^verdicts\[0\].at: input should be a valid datetime",
        ),
        (
            corrupt(verdicts=[{"at": T.isoformat(), "step": "x", "verdict": "p", "reason": ""}]),
            r"^verdicts\[0\].step: input should be a valid integer, got 'x'$",
        ),
        # Values a hand edit leaves that once crashed a tick with a traceback.
        (corrupt(canary_generation="x"), r"^canary_generation: input should be a valid integer"),
        (corrupt(total=0), r"total: a progressing release needs at least 1 replica, got 0"),
        (corrupt(revision=""), r"revision: a progressing release needs its canary revision"),
        (corrupt(judge=[]), r"^judge: input should be an object, got \[\]$"),
        (corrupt(notices=-3), r"^notices: input should be greater than or equal to 0, got -3$"),
        (corrupt(pending={}), r"^pending: input should be a valid array, got \{\}$"),
        (corrupt(pending=[1]), r"^pending\[0\]: input should be an object, got 1$"),
        (corrupt(pending=[{"reason": "RolledBack"}]), r"^pending\[0\].id: field required; "),
        (
            corrupt(pending=[{**NOTICE_JSON, "sinks": "oncall"}]),
            r"^pending\[0\].sinks: input should be a valid array, got 'oncall'$",
        ),
        (
            corrupt(pending=[{**NOTICE_JSON, "target": "ingress"}]),
            r"^pending\[0\].target: input should be 'canary' or 'stable', got 'ingress'$",
        ),
        (corrupt(pending=[{**NOTICE_JSON, "colour": 1}]), r"^pending\[0\].colour: unknown field$"),
        # Every problem is named, not just the first.
        (
            corrupt(total="10", step=-1),
            r"^total: input should be a valid integer, got '10'; step: ",
        ),
        ('{"schema": 1, "verdicts": [' * 2000, r"not JSON"),
    ],
)
def test_corrupt_annotations_raise_state_corrupt(text: str, message: str) -> None:
    with pytest.raises(StateCorrupt, match=message):
        loads(text)


def test_non_finite_numbers_are_written_as_null_so_the_annotation_is_strict_json() -> None:
    record = VerdictRecord(
        at=datetime(2026, 1, 1, tzinfo=UTC),
        step=0,
        verdict="inconclusive",
        reason="NaN",
        checks={"latency": {"verdict": "inconclusive", "value": float("nan")}},
    )
    text = dumps(RolloutState(verdicts=(record,)))
    assert "NaN" not in text.replace('"reason":"NaN"', "")
    assert loads(text).verdicts[0].checks["latency"]["value"] is None


# ---- states as the previous release stored them ---------------------------------------------
# Written by the release before states were validated by pydantic (schema 1, judge
# evidence in version 2, and a v1 copy): an upgraded daemon must resume them.
STORED = Path(__file__).parent / "stored"


def test_a_stored_state_loads_typed_and_is_written_back_byte_for_byte() -> None:
    text = (STORED / "progressing-with-evidence.json").read_text().strip()
    state = loads(text)
    assert (state.phase, state.total, state.step) == ("progressing", 10, 2)
    assert state.step_started_at == T
    assert state.pending[0].at == T
    assert state.verdicts[0].checks["errors"]["value"] == 0.001
    assert isinstance(state.judge, JudgeState)
    assert [m.safe for m in state.judge.metrics] == [True, True]
    assert state.judge.polls == 1
    assert state.judge.latency_pairs == ((0.25, 0.25),)
    assert dumps(state) == text


def test_stored_evidence_of_an_older_format_is_dropped_and_the_rest_kept() -> None:
    """An upgrade mid-release restarts the judge's evidence (see JudgeState.outdated)."""
    current = loads((STORED / "progressing-with-evidence.json").read_text())
    older = loads((STORED / "progressing-with-v1-evidence.json").read_text())
    assert older.judge is None
    assert older == dataclasses.replace(current, judge=None, pending=(), notices=0)


def test_damaged_evidence_is_named_by_its_path_in_the_state() -> None:
    data = json.loads((STORED / "progressing-with-evidence.json").read_text())
    data["judge"]["metrics"][0]["totals"] = [1, 2]
    missing = r"^judge.metrics\[0\].totals\[2\]: field required; judge.metrics\[0\].totals\[3\]"
    with pytest.raises(StateCorrupt, match=missing):
        loads(json.dumps(data))
    data["judge"]["metrics"][0]["totals"] = [1, 2, 3, 4]
    data["judge"]["metrics"][0]["evidence"] = [0.0]
    with pytest.raises(StateCorrupt, match=r"^judge: value error, judge state evidence for err"):
        loads(json.dumps(data))
    data["judge"]["version"] = 3
    with pytest.raises(StateCorrupt, match=r"^judge.version: input should be 2, got 3$"):
        loads(json.dumps(data))
