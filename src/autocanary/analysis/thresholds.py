"""Threshold analysis: which queries an interval needs, and the verdict their answers give.

Pure functions only; the engine runs the queries. Missing data, NaN, query
errors and too little traffic are *inconclusive*, never a pass (Flagger counts
missing data as a failure and Argo as an error; we keep it apart with its own
limit, as Argo's ``assessMetricStatus`` does).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from autocanary import promql
from autocanary.analysis import noise
from autocanary.analysis.verdict import CheckSummary, Verdict
from autocanary.config.models import (
    AnalysisConfig,
    CheckConfig,
    GatewayMetricsConfig,
    RolloutConfig,
)
from autocanary.config.units import format_duration
from autocanary.judge import Judgement, JudgeState

Role = Literal["canary", "stable"]


@dataclass(frozen=True)
class QueryOutcome:
    """What one query gave: a value, no data (``value is None``), or an error message."""

    value: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class PlannedCheck:
    """A check with its queries rendered for this interval."""

    check: CheckConfig
    canary_query: str
    stable_query: str | None  # only for relative checks
    #: Whether the value is errors / requests of the requests ``minRequests`` counts, so
    #: its chance variation can be told from a breach (see :mod:`noise`).
    counted: bool = False


@dataclass(frozen=True)
class Counts:
    """Requests each side served in the interval's window, where known."""

    canary: float | None = None
    stable: float | None = None


@dataclass(frozen=True)
class AnalysisPlan:
    """Every query one interval needs: the checks, plus request counts for ``minRequests``."""

    checks: tuple[PlannedCheck, ...]
    canary_requests_query: str
    stable_requests_query: str | None  # only when some check is relative


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome for one interval."""

    name: str
    verdict: Verdict
    value: float | None
    stable_value: float | None
    threshold: str
    reason: str

    def summary(self) -> CheckSummary:
        """The alert-facing view of this result."""
        return CheckSummary(
            name=self.name,
            verdict=self.verdict,
            value=self.value,
            threshold=self.threshold,
            stable_value=self.stable_value,
            reason=self.reason,
        )


@dataclass(frozen=True)
class IntervalVerdict:
    """The verdict of one analysis interval and the results it came from.

    With the sequential judge enabled, ``judgement`` is its verdict for the
    interval and ``judge_state`` the evidence to persist with the decision.
    """

    verdict: Verdict
    at: datetime
    checks: tuple[CheckResult, ...]
    canary_requests: float | None
    reason: str
    judgement: Judgement | None = None
    judge_state: JudgeState | None = None
    # How far back its queries looked (up to ``at``): the data it shares with another.
    window: timedelta | None = None


#: ``increase()``/``rate()`` need two samples in their window, and a window
#: that holds only two or three scrapes swings with where the scrapes fall:
#: a window is too short below this many scrape intervals.
MIN_SCRAPES = 4


def default_window(interval: timedelta, scrape_interval: timedelta | None) -> timedelta:
    """The window when none is configured: the interval, or four scrapes if that is longer."""
    if scrape_interval is None:
        return interval
    return max(interval, scrape_interval * MIN_SCRAPES)


def with_window(rollout: RolloutConfig, scrape_interval: timedelta | None) -> RolloutConfig:
    """``rollout`` with ``analysis.window`` filled in by :func:`default_window` when unset.

    What the daemon judges with, and what backtest replays with: both read the
    scrape interval from Prometheus.
    """
    if rollout.analysis.window is not None:
        return rollout
    window = default_window(rollout.interval, scrape_interval)
    analysis = rollout.analysis.model_copy(update={"window": window})
    return rollout.model_copy(update={"analysis": analysis})


def window_problem(rollout: RolloutConfig, scrape_interval: timedelta | None) -> str | None:
    """Why the configured ``analysis.window`` is too short for the scrape interval, if it is."""
    window = rollout.analysis.window
    if window is None or scrape_interval is None or window >= scrape_interval * MIN_SCRAPES:
        return None
    return (
        f"analysis.window {format_duration(window)} holds fewer than {MIN_SCRAPES} scrapes of "
        f"the rollout's series (Prometheus scrapes them every {format_duration(scrape_interval)}):"
        f" increase() and rate() over it give nothing or jumpy values; use at least "
        f"{format_duration(scrape_interval * MIN_SCRAPES)}, or leave window unset to derive it"
    )


def lookback(rollout: RolloutConfig, since: datetime | None, at: datetime) -> timedelta:
    """How far back the analysis at ``at`` looks: the window, and at least back to ``since``.

    ``since`` is the previous analysis of the step (or the end of its
    warm-up): an analysis that comes late judges everything since the
    previous one, so no traffic goes unjudged. Whole seconds, rounded up.
    """
    wanted = rollout.window if since is None else max(rollout.window, at - since)
    return timedelta(seconds=math.ceil(wanted.total_seconds()))


@dataclass(frozen=True)
class Pods:
    """One side's pods at an analysis: names and pod-template-hash values."""

    names: tuple[str, ...] = ()
    template_hashes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PodSets:
    """The pods of the canary and the stable Deployment, read from the API at an analysis.

    They tie series to a side when the app source names a ``podLabel``, and
    fill ``{{ pods }}`` and ``{{ pod_template_hashes }}``.
    """

    canary: Pods = Pods()
    stable: Pods = Pods()


def metrics_of(rollout: RolloutConfig, source: promql.Source | None = None) -> promql.Metrics:
    """The metrics of a traffic source (default the rollout's), with its version matcher."""
    source = source or rollout.analysis.source
    if source == "gateway":
        gw = rollout.analysis.gateway or GatewayMetricsConfig()
        # The pattern is a regex inside a PromQL string: its own backslashes and quotes
        # are escaped here; its {{ service }} and {{ namespace }} are filled per side.
        pattern = promql.escape_label_value(gw.service_pattern)
        version = f'{gw.service_label}=~"{pattern}"'
        return promql.Metrics(gw.requests, gw.duration, gw.status_label, gw.error_status, version)
    if source != "app":
        return promql.BUILTIN_METRICS[source]
    app = rollout.analysis.app
    assert app is not None  # the config validator guarantees it
    label = series_version_label(rollout)
    if label is None:
        version = f'{app.pod_label}=~"{{{{ pods }}}}"'
    else:
        version = f'{label}="{{{{ version }}}}"'
    return promql.Metrics(app.requests, app.duration, app.status_label, app.error_status, version)


def series_version_label(rollout: RolloutConfig) -> str | None:
    """The label of the rollout's series that holds the version; None when pods tie them.

    By default the rollout's ``versionLabel`` as Prometheus names a pod label it
    carries over: ``app.kubernetes.io/version`` becomes ``app_kubernetes_io_version``.
    """
    app = rollout.analysis.app
    if rollout.analysis.source != "app" or app is None:
        return "version"
    if app.pod_label is not None:
        return None
    return app.version_label or re.sub(r"[^a-zA-Z0-9_]", "_", rollout.version_label)


def uses_pods(rollout: RolloutConfig) -> bool:
    """Whether an analysis of ``rollout`` needs the pods of both Deployments."""
    analysis = rollout.analysis
    if analysis.app is not None and analysis.app.pod_label is not None:
        return True
    templates = [c.query for c in analysis.checks if c.query is not None]
    templates.append(analysis.effective_selector)
    return any(promql.variables_in(t) & {"pods", "pod_template_hashes"} for t in templates)


def requests_series(rollout: RolloutConfig) -> str:
    """The rollout's request-counter series, every version (to read the scrape interval of)."""
    variables = template_variables(rollout, "", "")
    return promql.render(promql.requests_series(metrics_of(rollout)), variables)


def template_variables(
    rollout: RolloutConfig,
    canary_version: str,
    stable_version: str,
    window: timedelta | None = None,
) -> dict[str, str]:
    """The ``{{ variables }}`` of a rollout's queries, except ``version`` and ``quantile``.

    ``window`` defaults to the rollout's (see :func:`lookback` for an analysis's own).
    """
    base = {
        "namespace": rollout.namespace,
        "rollout": rollout.name,
        "stable": rollout.stable,
        "canary": rollout.canary_name,
        "canary_version": canary_version,
        "stable_version": stable_version,
        "interval": format_duration(rollout.interval),
        "window": format_duration(window or rollout.window),
    }
    gateway = rollout.gateway
    base["canary_service"] = gateway.canary_service if gateway else ""
    base["stable_service"] = gateway.stable_service if gateway else ""
    blank = {
        "version": "",
        "quantile": "",
        "selector": "",
        "pods": "",
        "pod_template_hashes": "",
        "service": "",
    }
    base["selector"] = promql.render(rollout.analysis.effective_selector, {**base, **blank})
    return base


def side_variables(
    variables: Mapping[str, str], version: str, pods: Pods, quantile: str = ""
) -> dict[str, str]:
    """``variables`` completed for one side: its version and pods (and a check's quantile).

    A gateway rollout's side is also its backend Service (``service``): the
    canary's when ``version`` is the canary's (a release never starts with
    both sides on one version).
    """
    canary = version == variables.get("canary_version")
    return {
        **variables,
        "service": variables.get("canary_service" if canary else "stable_service", ""),
        "version": version,
        "quantile": quantile,
        "pods": promql.names_regex(pods.names),
        "pod_template_hashes": promql.names_regex(pods.template_hashes),
    }


def absolute_only(rollout: RolloutConfig) -> RolloutConfig:
    """``rollout`` judged by its absolute thresholds alone: no comparison, no judge."""
    kept = [a for c in rollout.analysis.checks if (a := c.absolute) is not None]
    analysis = rollout.analysis.model_copy(update={"checks": kept, "sequential": None})
    return rollout.model_copy(update={"analysis": analysis})


def plan(
    rollout: RolloutConfig,
    canary_version: str,
    stable_version: str,
    window: timedelta | None = None,
    pods: PodSets | None = None,
) -> AnalysisPlan:
    """Render every query an interval of ``rollout`` needs, looking back ``window``."""
    analysis = rollout.analysis
    pods = pods or PodSets()
    variables = template_variables(rollout, canary_version, stable_version, window)

    def canary(template: str, quantile: str = "") -> str:
        return promql.render(
            template, side_variables(variables, canary_version, pods.canary, quantile)
        )

    def stable(template: str, quantile: str = "") -> str:
        return promql.render(
            template, side_variables(variables, stable_version, pods.stable, quantile)
        )

    planned = []
    for check in analysis.checks:
        if check.query is not None:
            template = check.query
        else:
            assert check.template is not None  # the config validator guarantees one of the two
            template = promql.builtin_query(check.template, metrics_of(rollout, check.source))
        quantile = f"{check.effective_quantile:g}"
        planned.append(
            PlannedCheck(
                check=check,
                canary_query=canary(template, quantile),
                stable_query=stable(template, quantile) if check.relative is not None else None,
                # The requests counted are the rollout's source's: the same ones only if
                # the check reads that source too.
                counted=check.template == "error-rate"
                and metrics_of(rollout, check.source) == metrics_of(rollout),
            )
        )
    requests = promql.request_count_query(metrics_of(rollout))
    any_relative = any(c.relative is not None for c in analysis.checks)
    return AnalysisPlan(
        checks=tuple(planned),
        canary_requests_query=canary(requests),
        stable_requests_query=stable(requests) if any_relative else None,
    )


def describe_threshold(check: CheckConfig) -> str:
    """The threshold in words, e.g. ``<= 0.01`` or ``<= stable x 1.2 + 0.001``."""
    parts = []
    if check.min is not None:
        parts.append(f">= {check.min:g}")
    if check.max is not None:
        parts.append(f"<= {check.max:g}")
    if check.relative is not None:
        rel = check.relative
        if rel.direction == "higher-is-worse":
            text = f"<= stable x {1 + rel.tolerance:g}"
            text += f" + {rel.margin:g}" if rel.margin else ""
        else:
            text = f">= stable x {1 - rel.tolerance:g}"
            text += f" - {rel.margin:g}" if rel.margin else ""
        parts.append(text)
    return " and ".join(parts)


def _usable(outcome: QueryOutcome, role: Role) -> str | None:
    """Why an outcome cannot be judged, or None when it can."""
    if outcome.error is not None:
        return f"{role} query failed: {outcome.error}"
    if outcome.value is None:
        return f"no data for the {role}"
    if math.isnan(outcome.value):
        return f"{role} value is NaN (no traffic in the interval?)"
    return None


def judge_check(
    check: CheckConfig,
    canary: QueryOutcome,
    stable: QueryOutcome | None,
    *,
    counts: Counts | None = None,
    significance: float = 0.0,
) -> CheckResult:
    """Compare one check's values with its thresholds.

    With ``counts`` (an error-rate check over the requests counted) and a
    ``significance``, a rate beyond a threshold fails only if chance at the
    threshold would explain its count of errors less often than that
    (:mod:`noise`); otherwise it passes, saying so.
    """
    threshold = describe_threshold(check)

    def result(verdict: Verdict, reason: str) -> CheckResult:
        return CheckResult(
            check.name,
            verdict,
            canary.value,
            stable.value if stable is not None else None,
            threshold,
            reason,
        )

    problem = _usable(canary, "canary")
    if problem is not None:
        return result("inconclusive", problem)
    value = canary.value
    assert value is not None
    n = _count(counts.canary if counts is not None else None)
    tested = significance > 0 and n > 0 and 0.0 <= value <= 1.0
    errors = round(value * n) if tested else 0
    within: list[str] = []  # breaches chance explains

    def breach(bound: float, higher: bool) -> bool:
        """Whether ``value`` beyond ``bound`` is more than chance (always, untested)."""
        if not tested:
            return True
        chance = noise.at_least(errors, n, bound) if higher else noise.at_most(errors, n, bound)
        if chance < significance:
            return True
        within.append(
            f"{value:g} ({errors} of {n} requests) is beyond {bound:g}, "
            f"as chance at {bound:g} would make it {chance:.0%} of the time"
        )
        return False

    if check.min is not None and value < check.min and breach(check.min, higher=False):
        return result("fail", f"{value:g} is below the minimum {check.min:g}" + _odds(tested))
    if check.max is not None and value > check.max and breach(check.max, higher=True):
        return result("fail", f"{value:g} is above the maximum {check.max:g}" + _odds(tested))
    if check.relative is not None:
        if stable is None:
            return result("inconclusive", "no stable value to compare with")
        problem = _usable(stable, "stable")
        if problem is not None:
            return result("inconclusive", problem)
        assert stable.value is not None
        rel = check.relative
        base = stable.value
        stable_n = _count(counts.stable if counts is not None else None)
        if tested and stable_n > 0 and 0.0 <= base <= 1.0 and rel.direction == "higher-is-worse":
            # The stable's own window is as noisy: compared at the top of its interval.
            base = noise.upper_bound(round(base * stable_n), stable_n, significance)
        if rel.direction == "higher-is-worse":
            limit = base * (1 + rel.tolerance) + rel.margin
            if value > limit and breach(limit, higher=True):
                return result(
                    "fail",
                    f"{value:g} exceeds stable {stable.value:g} by more than allowed ({limit:g})"
                    + _odds(tested),
                )
        else:
            limit = stable.value * (1 - rel.tolerance) - rel.margin
            if value < limit and breach(limit, higher=False):
                return result(
                    "fail",
                    f"{value:g} is below stable {stable.value:g} by more than allowed ({limit:g})"
                    + _odds(tested),
                )
    if within:
        return result("pass", "; ".join(within))
    return result("pass", f"{value:g} within {threshold}")


def _count(requests: float | None) -> int:
    """A request count as a whole number; 0 when unknown."""
    if requests is None or not math.isfinite(requests) or requests < 0:
        return 0
    return round(requests)


def _odds(tested: bool) -> str:
    return " beyond chance" if tested else ""


def judge_interval(
    analysis: AnalysisConfig,
    plan_: AnalysisPlan,
    outcomes: Mapping[str, QueryOutcome],
    at: datetime,
) -> IntervalVerdict:
    """The verdict of one interval, from the outcome of each query in ``plan_`` (keyed by PromQL).

    Any failed check fails the interval; otherwise any inconclusive check, or
    fewer canary (or, for relative checks, stable) requests than
    ``minRequests``, makes it inconclusive; only then does it pass.
    """
    missing = QueryOutcome(error="query was not run")
    canary_requests = outcomes.get(plan_.canary_requests_query, missing)
    traffic_problem = _traffic_problem(analysis, canary_requests, "canary")
    stable_requests = (
        outcomes.get(plan_.stable_requests_query, missing)
        if plan_.stable_requests_query is not None
        else QueryOutcome()
    )
    stable_traffic_problem = (
        _traffic_problem(analysis, stable_requests, "stable")
        if plan_.stable_requests_query is not None
        else None
    )
    results = []
    for planned in plan_.checks:
        canary = outcomes.get(planned.canary_query, missing)
        stable = (
            outcomes.get(planned.stable_query, missing)
            if planned.stable_query is not None
            else None
        )
        judged = judge_check(
            planned.check,
            canary,
            stable,
            counts=Counts(canary_requests.value, stable_requests.value)
            if planned.counted
            else None,
            significance=analysis.significance,
        )
        problem = traffic_problem or (
            stable_traffic_problem if planned.stable_query is not None else None
        )
        if problem is not None and judged.verdict != "inconclusive":
            judged = dataclasses.replace(judged, verdict="inconclusive", reason=problem)
        results.append(judged)
    if not results and traffic_problem is not None:
        # No threshold checks (sequential judge only): too little traffic still says nothing.
        return IntervalVerdict("inconclusive", at, (), canary_requests.value, traffic_problem)
    return _aggregate(tuple(results), at, canary_requests.value)


def _traffic_problem(analysis: AnalysisConfig, outcome: QueryOutcome, role: Role) -> str | None:
    if outcome.error is not None:
        return f"{role} request count query failed: {outcome.error}"
    count = outcome.value
    if count is None or math.isnan(count):
        count = 0.0
    if count < analysis.min_requests:
        return (
            f"only {count:.0f} {role} requests in the interval "
            f"(minRequests {analysis.min_requests})"
        )
    return None


def _aggregate(
    results: Sequence[CheckResult], at: datetime, canary_requests: float | None
) -> IntervalVerdict:
    failed = [r for r in results if r.verdict == "fail"]
    unsure = [r for r in results if r.verdict == "inconclusive"]
    if failed:
        return IntervalVerdict("fail", at, tuple(results), canary_requests, _reasons(failed))
    if unsure:
        return IntervalVerdict(
            "inconclusive", at, tuple(results), canary_requests, _reasons(unsure)
        )
    return IntervalVerdict("pass", at, tuple(results), canary_requests, "all checks passed")


def _reasons(results: Sequence[CheckResult]) -> str:
    """The results' reasons, each said once: checks failing alike are named together.

    A Prometheus that cannot be reached fails every query the same way; one
    sentence says so, instead of the same error once per check.
    """
    names: dict[str, list[str]] = {}
    for r in results:
        names.setdefault(r.reason, []).append(r.name)
    return "; ".join(f"{', '.join(checks)}: {reason}" for reason, checks in names.items())
