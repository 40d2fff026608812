"""Text views of a report: a timeline per replay, and the releases x variants table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

from autocanary.backtest.report import CheckPoint, Outcome, Replay, Report, TimelineEntry
from autocanary.config.units import format_duration

_MARK = {"pass": "ok", "fail": "FAIL", "inconclusive": "?"}
_WORDS = {
    "promoted": "promoted",
    "rolledBack": "rolled back",
    "paused": "paused",
    "undecided": "undecided",
}


def number(value: float | None) -> str:
    """A value as the timeline shows it: 4 significant digits, ``-`` for no data."""
    if value is None:
        return "-"
    if math.isnan(value):
        return "NaN"
    return f"{value:.4g}"


def _clock(at: datetime, replay: Replay) -> str:
    same_day = replay.release.start.date() == replay.release.end.date()
    return at.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S")


def _table(rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _cell(point: CheckPoint | None) -> str:
    if point is None:
        return ""
    return f"{number(point.value)} {_MARK[point.verdict]}"


def outcome_text(outcome: Outcome, replay: Replay, *, short: bool = False) -> str:
    """``rolled back at 14:05:00 (+5m)`` and, unless ``short``, the step and the reason."""
    if outcome.at is None:
        head = "undecided"
    else:
        elapsed = format_duration(outcome.at - replay.release.start)
        head = f"{_WORDS[outcome.decision]} at {_clock(outcome.at, replay)} (+{elapsed})"
    if short:
        return head
    return f"{head}, step {outcome.step}: {outcome.reason}"


def _row(entry: TimelineEntry, replay: Replay, names: Sequence[str]) -> list[str]:
    points = {p.name: p for p in entry.checks}
    step = f"{entry.step}/{entry.steps} ({entry.canary_pods})"
    return [
        _clock(entry.at, replay),
        step,
        number(entry.canary_requests) if entry.verdict is not None else "",
        *(_cell(points.get(name)) for name in names),
        entry.verdict or "",
    ]


def timeline_text(replay: Replay) -> str:
    """What the daemon would have done, interval by interval, and the decision."""
    release = replay.release
    variant = replay.variant
    title = (
        f"release {release.name}: canary {release.canary_version} vs stable "
        f"{release.stable_version}, {release.start.isoformat()} to {release.end.isoformat()}"
        f" -- variant {variant.name}"
    )
    lines = [title]
    if variant.overrides:
        lines.append("  with " + " ".join(f"--set {o}" for o in variant.overrides))
    names = replay.checks()
    thresholds: dict[str, set[str]] = {}
    for entry in replay.timeline:
        for point in entry.checks:
            thresholds.setdefault(point.name, set()).add(point.threshold)
    # A fixed threshold goes in the header; one that changes (the judge's) stays out.
    header = [
        "time",
        "step (pods)",
        "requests",
        *(f"{n} {next(iter(thresholds[n]))}" if len(thresholds[n]) == 1 else n for n in names),
    ]
    rows: list[list[str]] = [[*header, "verdict"]]
    events: dict[int, list[str]] = {}
    for entry in replay.timeline:
        rows.append(_row(entry, replay, names))
        events[len(rows) - 1] = [f"{e.reason}: {e.message}" for e in entry.events]
    rendered = _table(rows, "  ")
    for i, line in enumerate(rendered):
        lines.append(line)
        lines.extend(f"      > {text}" for text in events.get(i, []))
    lines.append(f"  decision: {outcome_text(replay.outcome, replay)}")
    return "\n".join(lines)


def table_text(report: Report) -> str:
    """Releases down, variants across: each decision and its time; the variants explained below."""
    rows = [["release", "canary/stable", *(v.name for v in report.variants)]]
    for release in report.releases:
        cells = [release.name, f"{release.canary_version}/{release.stable_version}"]
        for variant in report.variants:
            replay = report.replay(release.name, variant.name)
            cells.append(outcome_text(replay.outcome, replay, short=True))
        rows.append(cells)
    lines = _table(rows)
    lines.append("")
    for variant in report.variants:
        what = (
            " ".join(f"--set {o}" for o in variant.overrides)
            if variant.overrides
            else "the rollout as configured"
        )
        lines.append(f"{variant.name}: {what}")
    return "\n".join(lines)


def report_text(report: Report) -> str:
    """Every timeline, then the table when there is more than one replay."""
    parts = [timeline_text(replay) for replay in report.replays]
    if len(report.replays) > 1:
        parts.append(table_text(report))
    return "\n\n".join(parts) + "\n"
