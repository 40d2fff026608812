"""``--plot FILE.png``: each check's value over time against its threshold, decisions marked.

One column per replay (release x variant), one row per check. Points are
coloured by their verdict (green pass, red fail, grey inconclusive); dashed
lines are the bounds the value had to respect (for a relative check they
follow the stable); dotted verticals are step advances, and the solid
vertical is the decision (green promoted, red rolled back, orange paused). Needs matplotlib (the
``plot`` extra); the figure is drawn without pyplot, so no display is needed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from autocanary.backtest.errors import BacktestError, PlotUnavailable
from autocanary.backtest.render import outcome_text
from autocanary.backtest.report import Replay, Report
from autocanary.rollout.state import Reason

_VERDICT_COLOURS = {"pass": "tab:green", "fail": "tab:red", "inconclusive": "tab:gray"}
_DECISION_COLOURS = {
    "promoted": "tab:green",
    "rolledBack": "tab:red",
    "paused": "tab:orange",
    "undecided": "tab:gray",
}


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise PlotUnavailable(
            "--plot needs matplotlib, which is not installed: pip install 'autocanary[plot]'"
        ) from e
    return Figure


def _finite(value: float | None) -> float:
    return value if value is not None and math.isfinite(value) else math.nan


def _bound(ax: Any, times: list[Any], limits: list[float], colour: str, label: str) -> None:
    known = [v for v in limits if math.isfinite(v)]
    if not known:
        return
    if all(v == known[0] for v in known):  # a fixed min/max: across the whole axis
        ax.axhline(known[0], linestyle="--", color=colour, linewidth=1, label=label)
    else:  # relative to the stable: moves with it
        ax.plot(times, limits, "--", color=colour, linewidth=1, label=label)


def _draw(ax: Any, replay: Replay, check: str, dates: Any) -> None:
    times, values, colours, uppers, lowers = [], [], [], [], []
    for entry in replay.timeline:
        for point in entry.checks:
            if point.name == check:
                times.append(entry.at)
                values.append(_finite(point.value))
                colours.append(_VERDICT_COLOURS[point.verdict])
                uppers.append(_finite(point.upper))
                lowers.append(_finite(point.lower))
    if times:
        ax.plot(times, values, color="tab:blue", linewidth=1, zorder=2)
        ax.scatter(times, values, c=colours, s=24, zorder=3)
        _bound(ax, times, uppers, "tab:red", "max")
        _bound(ax, times, lowers, "tab:purple", "min")
    for entry in replay.timeline:
        if any(e.reason is Reason.STEP_ADVANCED for e in entry.events):
            ax.axvline(entry.at, color="0.6", linestyle=":", linewidth=1)
    outcome = replay.outcome
    end = replay.release.end
    if outcome.at is not None:
        ax.axvline(outcome.at, color=_DECISION_COLOURS[outcome.decision], linewidth=2)
        # Show the replay up to its decision, with some room after it.
        end = min(end, outcome.at + (outcome.at - replay.release.start) * 0.25)
    ax.set_xlim(replay.release.start, end)
    if all(not math.isfinite(v) or v >= 0 for v in values + uppers + lowers):
        ax.set_ylim(bottom=0)
    ax.set_ylabel(check)
    ax.xaxis.set_major_formatter(dates.DateFormatter("%H:%M"))
    ax.grid(True, alpha=0.3)


def plot_report(report: Report, path: str | Path) -> Path:
    """Draw ``report`` into an image at ``path`` (format from its suffix, e.g. ``.png``)."""
    figure_class = _figure_class()
    from matplotlib import dates

    target = Path(path)
    checks: list[str] = []
    for replay in report.replays:
        checks.extend(c for c in replay.checks() if c not in checks)
    if not checks:
        raise BacktestError("nothing to plot: no interval was analysed in any replay")
    columns = len(report.replays)
    figure = figure_class(figsize=(5 * columns, 2.6 * len(checks) + 0.8), layout="constrained")
    axes = figure.subplots(len(checks), columns, squeeze=False, sharex="col")
    for col, replay in enumerate(report.replays):
        for row, check in enumerate(checks):
            _draw(axes[row][col], replay, check, dates)
        decision = outcome_text(replay.outcome, replay, short=True)
        axes[0][col].set_title(
            f"{replay.release.name} / {replay.variant.name}\n{decision}",
            color=_DECISION_COLOURS[replay.outcome.decision],
            fontsize=10,
        )
        axes[-1][col].set_xlabel(f"{replay.release.start:%Y-%m-%d} (UTC)")
    figure.suptitle(f"autocanary backtest: rollout {report.rollout}")
    try:
        figure.savefig(target, dpi=100)
    except (OSError, ValueError) as e:
        raise BacktestError(f"cannot write the plot to {target}: {e}") from e
    return target
