"""A whole backtest: variants built, history checked, every release replayed under every variant."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol

from autocanary.analysis import thresholds
from autocanary.backtest import overrides, preflight
from autocanary.backtest.errors import BacktestError, NoDataError
from autocanary.backtest.evaluate import (
    CachingSource,
    EvaluatorFactory,
    Silence,
    default_evaluator,
)
from autocanary.backtest.replay import replay
from autocanary.backtest.report import Release, Replay, Report
from autocanary.config.models import Config, RolloutConfig
from autocanary.rollout.interval import QuerySource


class ScrapeSource(Protocol):
    """How often series were scraped: :class:`autocanary.adapters.prometheus.PrometheusClient`."""

    def scrape_interval(self, series: str, at: datetime | None = None) -> timedelta | None:
        """The scrape interval of ``series`` around ``at``, or None with no samples."""
        ...


def _silent(result: Replay, silences: Sequence[Silence]) -> None:
    """:class:`NoDataError` naming every query that never gave a number in the replay."""
    if not silences:
        return
    lines = [
        f"{s.what}: {s.query}" + (f" (Prometheus said: {s.error})" if s.error else "")
        for s in silences
    ]
    analysed = sum(1 for e in result.timeline if e.verdict is not None)
    raise NoDataError(
        f"release {result.release.name!r}, variant {result.variant.name!r}: "
        f"{len(lines)} query(ies) returned no number at any of the {analysed} interval(s) "
        f"analysed between {result.release.start.isoformat()} and "
        f"{result.release.end.isoformat()}:\n  " + "\n  ".join(lines)
    )


def backtest(
    config: Config,
    rollout_name: str,
    releases: Sequence[Release],
    *,
    source: QuerySource,
    history: preflight.History | None,
    now: datetime,
    set_specs: Sequence[str] = (),
    replicas: int = 10,
    evaluator: EvaluatorFactory = default_evaluator,
    prometheus: str = "",
    scrapes: ScrapeSource | None = None,
) -> Report:
    """Replay ``releases`` under the rollout as configured and under each ``--set`` variant.

        ``history`` (None skips the checks) verifies retention, data and versions
        first; ``evaluator`` judges each interval (by default what the daemon runs:
    thresholds, plus the sequential judge when the rollout enables it);
        ``prometheus`` is the URL recorded in the report. A rollout with no
    ``analysis.window`` gets the daemon's default (:func:`thresholds.with_window`)
    from the scrape interval ``scrapes`` reads in each release's history (None:
    unknown, so the interval, as the daemon before its first read).
    """
    if replicas < 1:
        raise BacktestError(f"--replicas must be at least 1, got {replicas}")
    try:
        base = config.rollout(rollout_name)
    except KeyError as e:
        raise BacktestError(str(e.args[0])) from None
    built = [
        (variant, overrides.apply(config, base, changes))
        for variant, changes in overrides.variants(set_specs)
    ]
    cached = CachingSource(source)
    replays = []
    for release in releases:
        if history is not None:
            preflight.check_retention(history, release, now)
            checked: set[str] = set()
            for _, rollout in built:
                metric = preflight.requests_metric(rollout)
                if metric not in checked:
                    preflight.check_versions(history, rollout, release)
                    checked.add(metric)
        for variant, configured in built:
            rollout = _windowed(configured, release, scrapes)
            judge = evaluator(rollout, cached)
            result = replay(rollout, release, variant, judge, replicas=replicas)
            _silent(result, judge.silences())
            replays.append(result)
    return Report(
        rollout=base.name,
        prometheus=prometheus,
        replicas=replicas,
        releases=tuple(releases),
        variants=tuple(variant for variant, _ in built),
        replays=tuple(replays),
    )


def _windowed(
    rollout: RolloutConfig, release: Release, scrapes: ScrapeSource | None
) -> RolloutConfig:
    """``rollout`` with the window the daemon would have used during ``release``."""
    if rollout.analysis.window is not None or scrapes is None:
        return rollout
    scrape = scrapes.scrape_interval(thresholds.requests_series(rollout), at=release.end)
    return thresholds.with_window(rollout, scrape)
