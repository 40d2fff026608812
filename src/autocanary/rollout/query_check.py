"""``validate --check-queries``: run every query the daemon will run, on the versions present.

For each rollout: the window against the scrape interval, then the versions
(or, with ``thresholds.app.podLabel``, the pods; with ``source: gateway``, the
backend Services) that the rollout's request counter shows in Prometheus now,
then every query an analysis runs (checks, ``minRequests``, the sequential
judge's counters) for each version (or backend Service) found. A
query Prometheus rejects, one that returns no series, or several where one
number is expected, is a problem located at the config line it comes from.
A selector matching nothing is reported once, at the source, since every
query would then be empty.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Protocol

from autocanary import promql
from autocanary.analysis import judging, thresholds
from autocanary.config.loader import locate
from autocanary.config.models import Config, RolloutConfig
from autocanary.errors import ConfigProblem, PrometheusUnavailable, QueryError
from autocanary.rollout import interval

Locator = Callable[[Sequence[int | str], str], ConfigProblem]


class Prometheus(interval.QuerySource, Protocol):
    """What the check reads: :class:`autocanary.adapters.prometheus.PrometheusClient`."""

    def scrape_interval(self, series: str) -> timedelta | None:
        """How often ``series`` is scraped, or None without samples."""
        ...


def check_queries(path: str | Path, config: Config, prometheus: Prometheus) -> list[ConfigProblem]:
    """Every problem the config's queries have against ``prometheus``, located in ``path``.

    An unreachable Prometheus is a single problem at ``prometheus.url``.
    """

    def at(loc: Sequence[int | str], message: str) -> ConfigProblem:
        return dataclasses.replace(locate(path, loc), message=message)

    problems: list[ConfigProblem] = []
    try:
        for i, rollout in enumerate(config.rollouts):
            problems.extend(_check_rollout(rollout, prometheus, _prefixed(at, i)))
    except PrometheusUnavailable as e:
        return [ConfigProblem(str(path), None, "prometheus.url", str(e))]
    return problems


def _prefixed(at: Locator, i: int) -> Locator:
    return lambda loc, message: at(("rollouts", i, *loc), message)


def _source_loc(rollout: RolloutConfig) -> tuple[str, ...]:
    """Where the rollout's traffic series are configured."""
    a = rollout.analysis
    if a.selector is not None:
        return ("analysis", "selector")
    if a.source == "app":
        return ("analysis", "app", "requests")
    return ("analysis", "source")


def _check_rollout(
    rollout: RolloutConfig, prometheus: Prometheus, at: Locator
) -> list[ConfigProblem]:
    problems = []
    series = thresholds.requests_series(rollout)
    try:
        scrape = prometheus.scrape_interval(series)
    except QueryError as e:
        return [at(_source_loc(rollout), str(e))]
    window_problem = thresholds.window_problem(rollout, scrape)
    if window_problem is not None:
        problems.append(at(("analysis", "window"), window_problem))
    window = rollout.analysis.window or thresholds.default_window(rollout.interval, scrape)

    if rollout.analysis.source == "gateway":
        sides = _services(rollout, prometheus, series, at)
        noun = "backend Service"
    else:
        sides = _sides(rollout, prometheus, series, at)
        noun = "version"
    if isinstance(sides, ConfigProblem):
        return [*problems, sides]
    # One problem per query and kind, naming every version it concerns (the query shown
    # is the first version's).
    found: dict[tuple[tuple[int | str, ...], str], tuple[str, list[str]]] = {}
    for version, pods in sides:
        checked = _as_canary(rollout, version) if rollout.analysis.source == "gateway" else rollout
        for loc, kind, message in _check_version(
            checked, prometheus, version, pods, window, noun=noun
        ):
            found.setdefault((loc, kind), (message, []))[1].append(version)
    for (loc, _), (message, versions) in found.items():
        named = ", ".join(repr(v) for v in versions) if versions != [""] else "(the pods found)"
        problems.append(at(loc, message.replace("{versions}", named)))
    return problems


def _services(
    rollout: RolloutConfig, prometheus: Prometheus, series: str, at: Locator
) -> list[tuple[str, thresholds.Pods]] | ConfigProblem:
    """The gateway rollout's backend Services (stable first) with series in Prometheus.

    Between releases the canary's Service carries no traffic, so it may have none;
    the stable's alone is enough. Neither is a problem at ``analysis.source``.
    """
    gateway = rollout.gateway
    assert gateway is not None  # the config validator guarantees it for source gateway
    metrics = thresholds.metrics_of(rollout)
    counter = metrics.counter(f"{{{{ selector }}}}, {metrics.version}")
    # The side whose version is the canary's reads the canary's Service, the other the stable's.
    variables = thresholds.template_variables(rollout, gateway.canary_service, "")
    found, queries = [], []
    for service in (gateway.stable_service, gateway.canary_service):
        side = thresholds.side_variables(variables, service, thresholds.Pods())
        query = f"count({promql.render(counter, side)})"
        queries.append(query)
        if prometheus.query_vector(query):
            found.append((service, thresholds.Pods()))
    if found:
        return found
    return at(
        ("analysis", "source"),
        f"no series of {series} for backend Service {gateway.stable_service!r} or "
        f"{gateway.canary_service!r} in Prometheus: check that the gateway's metrics are "
        "scraped and analysis.gateway.servicePattern (queries "
        f"{' and '.join(queries)} returned nothing)",
    )


def _as_canary(rollout: RolloutConfig, service: str) -> RolloutConfig:
    """``rollout`` with ``service`` as its canary's backend, so the canary's queries read it."""
    gateway = rollout.gateway
    assert gateway is not None
    return rollout.model_copy(
        update={"gateway": gateway.model_copy(update={"canary_service": service})}
    )


def _sides(
    rollout: RolloutConfig, prometheus: Prometheus, series: str, at: Locator
) -> list[tuple[str, thresholds.Pods]] | ConfigProblem:
    """The versions (each with no pods), or the pods (as one side), present in Prometheus."""
    label = thresholds.series_version_label(rollout)
    app = rollout.analysis.app
    by = label if label is not None else (app.pod_label if app is not None else None)
    assert by is not None  # without a version label, the app source names a pod label
    query = f"count by ({by}) ({series})"
    values = sorted({labels.get(by, "") for labels, _ in prometheus.query_vector(query)})
    if not values:
        return at(
            _source_loc(rollout),
            f"no series of {series} in Prometheus: check the metric name and the selector "
            f"(query {query} returned nothing)",
        )
    if "" in values:
        where: tuple[str, ...] = (
            "analysis",
            "app",
            "podLabel" if label is None else "versionLabel",
        )
        if label is not None and (app is None or app.version_label is None):
            where = ("versionLabel",)
        labels_seen = sorted(
            {k for labels, _ in prometheus.query_vector(f"topk(1, {series})") for k in labels}
        )
        return at(
            where,
            f"series of {series} have no label {by!r}, so they cannot be told apart by "
            f"version (labels there: {', '.join(labels_seen)})",
        )
    if label is None:
        return [("", thresholds.Pods(tuple(values)))]
    return [(v, thresholds.Pods()) for v in values]


def _check_version(
    rollout: RolloutConfig,
    prometheus: Prometheus,
    version: str,
    pods: thresholds.Pods,
    window: timedelta,
    *,
    noun: str = "version",
) -> list[tuple[tuple[int | str, ...], str, str]]:
    """(location, kind, message) of each query failing for ``version``; {versions} in messages.

    The kind (what the query is for and how it failed) is the same for every version.
    ``noun`` names what ``version`` is in messages (a gateway rollout's backend Service).
    """
    sides = thresholds.PodSets(canary=pods, stable=pods)
    plan = thresholds.plan(rollout, version, version, window, sides)
    locations: dict[str, tuple[int | str, ...]] = {
        plan.canary_requests_query: ("analysis", "minRequests")
    }
    for j, planned in enumerate(plan.checks):
        locations.setdefault(planned.canary_query, ("analysis", "checks", j))
        if planned.stable_query is not None:
            locations.setdefault(planned.stable_query, ("analysis", "checks", j))
    problems = []
    for query, purpose in interval.plan_queries(plan).items():
        what = purpose.removesuffix(" (canary)")  # one version on both sides here
        try:
            value = prometheus.query_value(query)
        except QueryError as e:
            problems.append(
                (locations[query], f"{what}: error", f"{what}, {noun} {{versions}}: {e}")
            )
            continue
        if value is None:
            problems.append(
                (
                    locations[query],
                    f"{what}: none",
                    f"{what} returned no series for {noun} {{versions}}: {query}",
                )
            )
    if rollout.analysis.sequential is not None:
        queries = judging.counter_queries(rollout, version, version, version, pods)
        for what, query in (("requests", queries.requests), ("buckets", queries.buckets)):
            try:
                samples = prometheus.query_vector(query)
            except QueryError as e:
                problems.append(
                    (("analysis", "sequential"), f"{what}: error", f"judge's {what}: {e}")
                )
                continue
            if not samples:
                problems.append(
                    (
                        ("analysis", "sequential"),
                        f"{what}: none",
                        f"the sequential judge's {what} counters returned no series for "
                        f"{noun} {{versions}}: {query}",
                    )
                )
    return problems
