"""Checks before a replay, so an empty window says why instead of pausing on "no data".

In order: the window lies within Prometheus's retention; the rollout's traffic
series (the analysis source's request counter under its selector) have samples
in the window; and both versions appear among them (with ``source: gateway``,
the canary's and the stable's backend Service each have series). Each failure names the
query it ran and what to change.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from autocanary import promql
from autocanary.adapters.prometheus_history import Retention
from autocanary.analysis import thresholds
from autocanary.backtest.errors import (
    BacktestInputError,
    NoDataError,
    RetentionError,
    UnknownVersionError,
)
from autocanary.backtest.report import Release
from autocanary.config.models import RolloutConfig
from autocanary.config.units import format_duration
from autocanary.promql import Sample


class History(Protocol):
    """What the checks read: :class:`autocanary.adapters.prometheus_history.PrometheusHistory`."""

    url: str

    def vector(self, promql: str, at: datetime) -> list[Sample]:
        """Each series' labels and value at ``at``."""
        ...

    def retention(self) -> Retention | None:
        """How long samples are kept, when Prometheus says."""
        ...


def requests_metric(rollout: RolloutConfig) -> str:
    """The source's request counter under the rollout's selector, e.g. ``m{target="shop"}``."""
    return thresholds.requests_series(rollout)


def versions_query(rollout: RolloutConfig, release: Release) -> str:
    """Counts the traffic series per version over the whole window (evaluated at its end)."""
    label = thresholds.series_version_label(rollout)
    if label is None:
        raise BacktestInputError(
            f"rollout {rollout.name!r} ties series to versions by thresholds.app.podLabel: "
            "which pods ran which version in the past is not kept, so it cannot be replayed; "
            "carry the version label onto the series (podTargetLabels) to backtest it"
        )
    window = format_duration(release.end - release.start)
    return f"count by ({label}) (last_over_time({requests_metric(rollout)}[{window}]))"


def _time(at: datetime) -> str:
    return at.isoformat(timespec="seconds")


def check_retention(history: History, release: Release, now: datetime) -> None:
    """:class:`RetentionError` when the window starts before the oldest sample kept."""
    retention = history.retention()
    if retention is None or retention.time is None:
        return
    horizon = now - retention.time
    if release.start < horizon:
        raise RetentionError(
            f"release {release.name!r}: the window starts at {_time(release.start)}, but "
            f"Prometheus at {history.url} keeps samples for {retention.text} "
            f"(--storage.tsdb.retention.time), so nothing before {_time(horizon)} is left; "
            "choose a later window or a Prometheus with longer retention"
        )


def service_query(rollout: RolloutConfig, release: Release, version: str) -> str:
    """Counts the series of the backend Service that carries ``version`` of a gateway rollout
    (the canary's Service for the release's canary version, else the stable's) over the window."""
    metrics = thresholds.metrics_of(rollout)
    counter = metrics.counter(f"{{{{ selector }}}}, {metrics.version}")
    variables = thresholds.template_variables(
        rollout, release.canary_version, release.stable_version
    )
    side = thresholds.side_variables(variables, version, thresholds.Pods())
    window = format_duration(release.end - release.start)
    return f"count(last_over_time({promql.render(counter, side)}[{window}]))"


def _check_services(history: History, rollout: RolloutConfig, release: Release) -> list[str]:
    """A gateway rollout's :func:`check_versions`: its series name a backend Service, so
    each version is looked for in the Service that carried it (the canary's, the stable's)."""
    gateway = rollout.gateway
    assert gateway is not None  # the config validator guarantees it for source gateway
    span = f"between {_time(release.start)} and {_time(release.end)}"
    sides = (
        ("canary", release.canary_version, gateway.canary_service),
        ("stable", release.stable_version, gateway.stable_service),
    )
    for role, version, service in sides:
        query = service_query(rollout, release, version)
        if not history.vector(query, release.end):
            raise UnknownVersionError(
                f"release {release.name!r}: the {role}'s backend Service {service!r} matches no "
                f"series of {requests_metric(rollout)} {span} (query {query}); check "
                f"gateway.{role}Service and analysis.gateway.servicePattern, and that the "
                "gateway's metrics were scraped then"
            )
    return [release.canary_version, release.stable_version]


def check_versions(history: History, rollout: RolloutConfig, release: Release) -> list[str]:
    """The versions with traffic in the window; :class:`NoDataError` or
    :class:`UnknownVersionError` when there is none, or not for both versions."""
    if rollout.analysis.source == "gateway":
        return _check_services(history, rollout, release)
    query = versions_query(rollout, release)
    series = history.vector(query, release.end)
    label = thresholds.series_version_label(rollout) or "version"
    versions = sorted(labels.get(label, "") for labels, _ in series)
    span = f"between {_time(release.start)} and {_time(release.end)}"
    if not versions:
        raise NoDataError(
            f"release {release.name!r}: no samples of {requests_metric(rollout)} {span} "
            f"(query {query} returned nothing); check the window, thresholds.source and "
            "thresholds.selector, and that the traffic source was scraped then"
        )
    for role, version in (("canary", release.canary_version), ("stable", release.stable_version)):
        if version not in versions:
            raise UnknownVersionError(
                f"release {release.name!r}: the {role} version {version!r} matches no series of "
                f"{requests_metric(rollout)} {span}; versions there: {', '.join(versions)} "
                f"(query {query})"
            )
    return versions
