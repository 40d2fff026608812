"""Query planning and per-interval verdicts."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from builders import make_rollout

from autocanary.analysis.thresholds import (
    AnalysisPlan,
    Pods,
    PodSets,
    QueryOutcome,
    default_window,
    describe_threshold,
    judge_check,
    judge_interval,
    lookback,
    plan,
    requests_series,
    template_variables,
    uses_pods,
    window_problem,
)
from autocanary.config.models import AnalysisConfig, CheckConfig

AT = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
NAN = float("nan")
INF = float("inf")


def check(**fields: Any) -> CheckConfig:
    data: dict[str, Any] = {"name": "c", "template": "request-rate"}
    data.update(fields)
    return CheckConfig.model_validate(data)


def value(v: float | None) -> QueryOutcome:
    return QueryOutcome(value=v)


# ------------------------------------------------------------------ planning


def test_template_variables() -> None:
    rollout = make_rollout()
    variables = template_variables(rollout, "2.0", "1.0")
    assert variables == {
        "namespace": "shop",
        "rollout": "web",
        "stable": "web",
        "canary": "web-canary",
        "canary_version": "2.0",
        "stable_version": "1.0",
        "interval": "30s",
        "window": "30s",
        "selector": 'target="web"',
        # Gateway rollouts only: their backend Services.
        "canary_service": "",
        "stable_service": "",
    }


def test_testpage_selector_default_and_custom_selector() -> None:
    testpage = make_rollout(analysis={"source": "testpage"})
    assert template_variables(testpage, "2", "1")["selector"] == 'namespace="shop"'
    custom = make_rollout(analysis={"selector": 'job="{{ rollout }}", ns="{{ namespace }}"'})
    assert template_variables(custom, "2", "1")["selector"] == 'job="web", ns="shop"'


def test_plan_renders_builtins_with_the_selector_and_versions() -> None:
    rollout = make_rollout(
        interval="1m",
        analysis={
            "checks": [
                {"name": "errors", "template": "error-rate", "max": "1%"},
                {"name": "p95", "template": "latency", "quantile": 0.95, "max": "300ms"},
                {"name": "p99", "template": "latency", "source": "testpage", "max": "1s"},
            ]
        },
    )
    planned = plan(rollout, "2.0", "1.0")
    errors, p95, p99 = planned.checks
    assert errors.canary_query == (
        '(sum(increase(probe_requests_total{target="web", version="2.0", code=~"5..|error"}[1m]))'
        ' or vector(0)) / sum(increase(probe_requests_total{target="web", version="2.0"}[1m]))'
    )
    assert errors.stable_query is None
    assert p95.canary_query.startswith("histogram_quantile(0.95, ")
    assert 'probe_request_duration_seconds_bucket{target="web", version="2.0"}[1m]' in (
        p95.canary_query
    )
    assert p99.canary_query.startswith("histogram_quantile(0.99, ")
    assert "testpage_request_duration_seconds_bucket" in p99.canary_query
    assert planned.canary_requests_query == (
        'sum(increase(probe_requests_total{target="web", version="2.0"}[1m]))'
    )
    assert planned.stable_requests_query is None  # no relative check


S = timedelta(seconds=1)


def test_the_default_window_holds_four_scrapes_and_at_least_the_interval() -> None:
    assert default_window(30 * S, None) == 30 * S  # scrape interval unknown: the interval
    assert default_window(30 * S, 30 * S) == 120 * S  # one sample per interval is nothing
    assert default_window(30 * S, 5 * S) == 30 * S
    assert default_window(2 * S, 1 * S) == 4 * S


def test_a_configured_window_below_four_scrapes_is_a_problem_naming_both() -> None:
    short = make_rollout(analysis={"window": "1m"})
    problem = window_problem(short, 30 * S)
    assert problem is not None
    assert "analysis.window 1m holds fewer than 4 scrapes" in problem
    assert "every 30s" in problem
    assert "use at least 2m" in problem
    assert window_problem(short, 15 * S) is None
    assert window_problem(short, None) is None  # unknown scrape interval: nothing to say
    assert window_problem(make_rollout(), 30 * S) is None  # derived, never too short


def test_the_window_is_a_minimum_lookback_that_covers_the_gap_since_the_last_analysis() -> None:
    rollout = make_rollout(analysis={"window": "2m"})  # interval 30s
    assert lookback(rollout, None, AT) == 120 * S
    assert lookback(rollout, AT - 40 * S, AT) == 120 * S
    # A late analysis (the daemon was away) judges everything since the previous one.
    assert lookback(rollout, AT - 300 * S, AT) == 300 * S
    assert lookback(rollout, AT - timedelta(seconds=130.2), AT) == 131 * S  # whole seconds


def test_plan_renders_the_window_into_builtins_and_custom_queries() -> None:
    query = "sum(rate(x[{{ window }}])) / sum(rate(y[{{ interval }}]))"
    rollout = make_rollout(
        analysis={
            "window": "2m",
            "checks": [
                {"name": "errors", "template": "error-rate", "max": "1%"},
                {"name": "own", "query": query, "max": 1},
            ],
        }
    )
    assert rollout.window == 120 * S
    errors, own = plan(rollout, "2.0", "1.0").checks
    assert errors.canary_query.count("[2m]") == 2
    assert own.canary_query == "sum(rate(x[2m])) / sum(rate(y[30s]))"
    later = plan(rollout, "2.0", "1.0", 150 * S)
    assert later.canary_requests_query == (
        'sum(increase(probe_requests_total{target="web", version="2.0"}[2m30s]))'
    )
    assert requests_series(rollout) == 'probe_requests_total{target="web"}'
    testpage = make_rollout(analysis={"source": "testpage"})
    assert requests_series(testpage) == 'testpage_requests_total{path="/", namespace="shop"}'


def test_plan_of_a_relative_check_queries_the_stable_too() -> None:
    rollout = make_rollout(
        scaleDownStable=False,
        analysis={
            "checks": [
                {"name": "errors", "template": "error-rate", "relative": {"tolerance": "20%"}}
            ]
        },
    )
    planned = plan(rollout, "2.0", "1.0")
    (errors,) = planned.checks
    assert errors.stable_query == errors.canary_query.replace('version="2.0"', 'version="1.0"')
    assert planned.stable_requests_query == (
        'sum(increase(probe_requests_total{target="web", version="1.0"}[30s]))'
    )


def test_plan_escapes_versions() -> None:
    rollout = make_rollout()
    planned = plan(rollout, 'v2"} or vector(0) or x{a="', "1.0")
    assert 'version="v2\\"} or vector(0) or x{a=\\""' in planned.checks[0].canary_query


def test_plan_renders_custom_queries() -> None:
    query = (
        'max(up{namespace="{{ namespace }}", deployment="{{ canary }}", v="{{ canary_version }}"}'
        ' / on() up{deployment="{{ stable }}", v="{{ stable_version }}"})'
        " [{{ interval }}] {{ version }}"
    )
    rollout = make_rollout(analysis={"checks": [{"name": "up", "query": query, "min": 1}]})
    (planned,) = plan(rollout, "2.0", "1.0").checks
    assert planned.canary_query == (
        'max(up{namespace="shop", deployment="web-canary", v="2.0"}'
        ' / on() up{deployment="web", v="1.0"}) [30s] 2.0'
    )


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({"max": 0.01}, "<= 0.01"),
        ({"min": 5, "max": 10}, ">= 5 and <= 10"),
        ({"relative": {"tolerance": "20%"}}, "<= stable x 1.2"),
        ({"relative": {"tolerance": "20%", "margin": 0.001}}, "<= stable x 1.2 + 0.001"),
        ({"relative": {"tolerance": "10%", "direction": "lower-is-worse"}}, ">= stable x 0.9"),
        (
            {"relative": {"tolerance": "10%", "direction": "lower-is-worse", "margin": 2}},
            ">= stable x 0.9 - 2",
        ),
    ],
)
def test_describe_threshold(fields: dict[str, Any], text: str) -> None:
    assert describe_threshold(check(**fields)) == text


# ------------------------------------------------------------------ one check


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        (QueryOutcome(error="bad_data: parse error"), "canary query failed: bad_data: parse error"),
        (QueryOutcome(), "no data for the canary"),
        (value(NAN), "canary value is NaN"),
    ],
)
def test_unusable_canary_values_are_inconclusive(outcome: QueryOutcome, reason: str) -> None:
    result = judge_check(check(max=0.01), outcome, None)
    assert result.verdict == "inconclusive"
    assert reason in result.reason


@pytest.mark.parametrize(
    ("fields", "canary", "verdict"),
    [
        ({"max": 0.01}, 0.0, "pass"),
        ({"max": 0.01}, 0.01, "pass"),  # the bound itself is allowed
        ({"max": 0.01}, 0.0100001, "fail"),
        ({"min": 5}, 5.0, "pass"),
        ({"min": 5}, 4.99, "fail"),
        ({"min": 1, "max": 2}, 1.5, "pass"),
        ({"min": 1, "max": 2}, 2.5, "fail"),
        ({"min": 1, "max": 2}, 0.5, "fail"),
        ({"max": 0.5}, INF, "fail"),  # histogram_quantile's +Inf: slower than every bucket
        ({"min": 0}, -INF, "fail"),
    ],
)
def test_min_and_max(fields: dict[str, Any], canary: float, verdict: str) -> None:
    result = judge_check(check(**fields), value(canary), None)
    assert result.verdict == verdict
    assert result.value == canary


def test_fail_reasons_name_the_bound() -> None:
    assert judge_check(check(max=0.01), value(0.5), None).reason == "0.5 is above the maximum 0.01"
    assert judge_check(check(min=2), value(1), None).reason == "1 is below the minimum 2"
    assert judge_check(check(max=0.01), value(0), None).reason == "0 within <= 0.01"


@pytest.mark.parametrize(
    ("relative", "canary", "stable", "verdict"),
    [
        ({"tolerance": "20%"}, 0.12, 0.1, "pass"),
        ({"tolerance": "20%"}, 0.1201, 0.1, "fail"),
        ({"tolerance": "20%"}, 0.01, 0.1, "pass"),  # better than stable
        ({"tolerance": "20%"}, 0.001, 0.0, "fail"),  # one error against none: the margin's job
        ({"tolerance": "20%", "margin": 0.002}, 0.001, 0.0, "pass"),
        ({"tolerance": "20%", "margin": 0.002}, 0.0021, 0.0, "fail"),
        ({"tolerance": "10%", "direction": "lower-is-worse"}, 90.0, 100.0, "pass"),
        ({"tolerance": "10%", "direction": "lower-is-worse"}, 89.9, 100.0, "fail"),
        ({"tolerance": "10%", "direction": "lower-is-worse"}, 500.0, 100.0, "pass"),
        ({"tolerance": "10%", "direction": "lower-is-worse", "margin": 5}, 85.5, 100.0, "pass"),
        ({"tolerance": "10%", "direction": "lower-is-worse", "margin": 5}, 84.9, 100.0, "fail"),
        ({"tolerance": "20%"}, INF, 0.2, "fail"),
    ],
)
def test_relative(relative: dict[str, Any], canary: float, stable: float, verdict: str) -> None:
    result = judge_check(check(relative=relative), value(canary), value(stable))
    assert result.verdict == verdict, result.reason
    assert result.stable_value == stable
    if verdict == "fail":
        assert "stable" in result.reason


@pytest.mark.parametrize(
    ("stable", "reason"),
    [
        (None, "no stable value to compare with"),
        (QueryOutcome(error="timeout"), "stable query failed: timeout"),
        (QueryOutcome(), "no data for the stable"),
        (value(NAN), "stable value is NaN"),
    ],
)
def test_relative_without_a_usable_stable_is_inconclusive(
    stable: QueryOutcome | None, reason: str
) -> None:
    result = judge_check(check(relative={"tolerance": "20%"}), value(0.1), stable)
    assert result.verdict == "inconclusive"
    assert reason in result.reason


def test_absolute_bounds_fail_even_without_a_stable_value() -> None:
    result = judge_check(check(max=0.05, relative={"tolerance": "20%"}), value(0.5), QueryOutcome())
    assert result.verdict == "fail"


def test_check_result_summary() -> None:
    result = judge_check(check(max=0.01), value(0.5), None)
    summary = result.summary()
    assert (summary.name, summary.verdict, summary.value) == ("c", "fail", 0.5)
    assert summary.threshold == "<= 0.01"
    assert summary.reason == result.reason


# ------------------------------------------------------------------ one interval


def setup(
    checks: list[dict[str, Any]] | None = None, min_requests: int = 10, significance: str = "1%"
) -> tuple[AnalysisConfig, AnalysisPlan]:
    rollout = make_rollout(
        # The stable keeps its pods at every step, so comparisons with it always judge.
        scaleDownStable=False,
        analysis={
            "minRequests": min_requests,
            "significance": significance,
            "checks": checks or [{"name": "errors", "template": "error-rate", "max": "1%"}],
        },
    )
    return rollout.analysis, plan(rollout, "2.0", "1.0")


def outcomes_for(
    planned: AnalysisPlan,
    values: dict[str, QueryOutcome],
    canary_requests: QueryOutcome | None = None,
    stable_requests: QueryOutcome | None = None,
) -> dict[str, QueryOutcome]:
    """Outcomes keyed by PromQL: check names map to their canary (or 'name:stable') query."""
    result = {planned.canary_requests_query: canary_requests or value(100)}
    if planned.stable_requests_query is not None:
        result[planned.stable_requests_query] = stable_requests or value(100)
    for p in planned.checks:
        if p.check.name in values:
            result[p.canary_query] = values[p.check.name]
        if p.stable_query is not None and f"{p.check.name}:stable" in values:
            result[p.stable_query] = values[f"{p.check.name}:stable"]
    return result


def test_interval_passes_when_every_check_passes() -> None:
    analysis, planned = setup(
        [
            {"name": "errors", "template": "error-rate", "max": "1%"},
            {"name": "p99", "template": "latency", "max": "500ms"},
        ]
    )
    outcomes = outcomes_for(planned, {"errors": value(0.0), "p99": value(0.2)}, value(250))
    verdict = judge_interval(analysis, planned, outcomes, AT)
    assert verdict.verdict == "pass"
    assert verdict.reason == "all checks passed"
    assert verdict.at == AT
    assert verdict.canary_requests == 250
    assert [c.verdict for c in verdict.checks] == ["pass", "pass"]


@pytest.mark.parametrize(
    ("requests", "reason"),
    [
        (value(9), "only 9 canary requests in the interval (minRequests 10)"),
        (value(0), "only 0 canary requests"),
        (QueryOutcome(), "only 0 canary requests"),
        (value(NAN), "only 0 canary requests"),
        (QueryOutcome(error="503"), "canary request count query failed: 503"),
    ],
)
@pytest.mark.parametrize("check_value", [0.0, 0.5])  # a pass and a fail alike
def test_too_little_canary_traffic_is_inconclusive(
    requests: QueryOutcome, reason: str, check_value: float
) -> None:
    analysis, planned = setup()
    outcomes = outcomes_for(planned, {"errors": value(check_value)}, requests)
    verdict = judge_interval(analysis, planned, outcomes, AT)
    assert verdict.verdict == "inconclusive"
    assert reason in verdict.reason


def test_exactly_min_requests_is_enough() -> None:
    analysis, planned = setup(min_requests=10)
    outcomes = outcomes_for(planned, {"errors": value(0.0)}, value(10))
    assert judge_interval(analysis, planned, outcomes, AT).verdict == "pass"


def test_min_requests_zero_needs_no_traffic() -> None:
    analysis, planned = setup(min_requests=0)
    outcomes = outcomes_for(planned, {"errors": value(0.0)}, QueryOutcome())
    assert judge_interval(analysis, planned, outcomes, AT).verdict == "pass"


def test_too_little_stable_traffic_matters_only_for_relative_checks() -> None:
    analysis, planned = setup(
        [
            {"name": "errors", "template": "error-rate", "max": "1%"},
            {"name": "latency", "template": "latency", "relative": {"tolerance": "20%"}},
        ]
    )
    values = {"errors": value(0.0), "latency": value(0.1), "latency:stable": value(0.1)}
    outcomes = outcomes_for(planned, values, value(100), value(3))
    verdict = judge_interval(analysis, planned, outcomes, AT)
    assert verdict.verdict == "inconclusive"
    errors, latency = verdict.checks
    assert errors.verdict == "pass"
    assert latency.verdict == "inconclusive"
    assert latency.reason == "only 3 stable requests in the interval (minRequests 10)"


def test_relative_check_passes_with_enough_traffic_on_both() -> None:
    analysis, planned = setup(
        [{"name": "latency", "template": "latency", "relative": {"tolerance": "20%"}}]
    )
    values = {"latency": value(0.11), "latency:stable": value(0.1)}
    verdict = judge_interval(analysis, planned, outcomes_for(planned, values), AT)
    assert verdict.verdict == "pass"
    assert verdict.checks[0].stable_value == 0.1


def test_a_query_that_was_not_run_is_inconclusive() -> None:
    analysis, planned = setup()
    outcomes = {planned.canary_requests_query: value(100)}
    verdict = judge_interval(analysis, planned, outcomes, AT)
    assert verdict.verdict == "inconclusive"
    assert "query was not run" in verdict.reason


def test_fail_outranks_inconclusive_outranks_pass() -> None:
    analysis, planned = setup(
        [
            {"name": "a", "query": "errors_a", "max": "1%"},
            {"name": "b", "query": "errors_b", "max": "1%"},
            {"name": "c", "query": "errors_c", "max": "1%"},
        ]
    )
    mixed = {"a": value(0.0), "b": value(NAN), "c": value(0.5)}
    verdict = judge_interval(analysis, planned, outcomes_for(planned, mixed), AT)
    assert verdict.verdict == "fail"
    assert verdict.reason == "c: 0.5 is above the maximum 0.01"
    assert [c.verdict for c in verdict.checks] == ["pass", "inconclusive", "fail"]

    unsure = {"a": value(0.0), "b": QueryOutcome(), "c": value(0.0)}
    verdict = judge_interval(analysis, planned, outcomes_for(planned, unsure), AT)
    assert verdict.verdict == "inconclusive"
    assert verdict.reason == "b: no data for the canary"


def test_nan_is_never_a_pass() -> None:
    analysis, planned = setup([{"name": "e", "template": "error-rate", "min": 0, "max": "100%"}])
    verdict = judge_interval(analysis, planned, outcomes_for(planned, {"e": value(NAN)}), AT)
    assert verdict.verdict == "inconclusive"
    assert verdict.checks[0].value is not None
    assert math.isnan(verdict.checks[0].value)


# ------------------------------------------------------------------ the app source

APP = {
    "requests": "http_requests_total",
    "statusLabel": "status",
    "duration": "http_request_duration_seconds",
}


def test_the_app_source_reads_the_apps_counter_status_label_and_histogram() -> None:
    rollout = make_rollout(
        versionLabel="app.kubernetes.io/version",
        analysis={
            "source": "app",
            "app": APP,
            "checks": [
                {"name": "errors", "template": "error-rate", "max": "1%"},
                {"name": "p95", "template": "latency", "quantile": 0.95, "max": "300ms"},
            ],
        },
    )
    errors, p95 = plan(rollout, "2.0", "1.0").checks
    series = 'namespace="shop", app_kubernetes_io_version="2.0"'
    assert errors.canary_query == (
        f'(sum(increase(http_requests_total{{{series}, status=~"5.."}}[30s])) or vector(0))'
        f" / sum(increase(http_requests_total{{{series}}}[30s]))"
    )
    assert p95.canary_query == (
        "histogram_quantile(0.95, sum by (le) "
        f"(rate(http_request_duration_seconds_bucket{{{series}}}[30s])))"
    )
    assert requests_series(rollout) == 'http_requests_total{namespace="shop"}'


def test_the_app_source_can_tie_series_to_each_sides_pods() -> None:
    rollout = make_rollout(
        scaleDownStable=False,
        analysis={
            "source": "app",
            "app": {**APP, "podLabel": "pod", "errorStatus": "5..|429"},
            "checks": [
                {"name": "errors", "template": "error-rate", "relative": {"tolerance": "20%"}}
            ],
        },
    )
    assert uses_pods(rollout)
    pods = PodSets(
        canary=Pods(("web-canary-7d-b", "web-canary-7d-a"), ("7d",)),
        stable=Pods(("web-5c.x",), ("5c",)),
    )
    planned = plan(rollout, "2.0", "1.0", pods=pods)
    (errors,) = planned.checks
    assert 'pod=~"web-canary-7d-a|web-canary-7d-b", status=~"5..|429"' in errors.canary_query
    assert errors.stable_query is not None
    assert 'pod=~"web-5c[.]x"' in errors.stable_query
    assert planned.canary_requests_query == (
        'sum(increase(http_requests_total{namespace="shop", '
        'pod=~"web-canary-7d-a|web-canary-7d-b"}[30s]))'
    )
    # No pods read (yet): the regex matches no series, so there is no data, never all of it.
    assert 'pod=~""' in plan(rollout, "2.0", "1.0").canary_requests_query


def test_custom_queries_may_use_the_pods_and_their_template_hashes() -> None:
    query = 'sum(rate(x{pod=~"{{ pods }}", h=~"{{ pod_template_hashes }}"}[{{ window }}]))'
    rollout = make_rollout(analysis={"checks": [{"name": "own", "query": query, "max": 1}]})
    assert uses_pods(rollout)
    assert not uses_pods(make_rollout())
    pods = PodSets(canary=Pods(("a", "b"), ("h1",)))
    (own,) = plan(rollout, "2.0", "1.0", pods=pods).checks
    assert own.canary_query == 'sum(rate(x{pod=~"a|b", h=~"h1"}[30s]))'


@pytest.mark.parametrize(
    ("analysis", "message"),
    [
        ({"source": "app"}, "source 'app' needs 'app'"),
        (
            {"checks": [{"name": "e", "template": "error-rate", "source": "app", "max": "1%"}]},
            "source 'app' needs 'app'",
        ),
        (
            {"source": "app", "app": {**APP, "versionLabel": "v", "podLabel": "pod"}},
            "by 'versionLabel' or by 'podLabel', not both",
        ),
        ({"source": "app", "app": {**APP, "errorStatus": "5(("}}, "not a regular expression"),
        ({"source": "app", "app": {**APP, "requests": "http-requests"}}, "should match pattern"),
        ({"source": "app", "app": {"requests": "x"}}, "duration"),
    ],
)
def test_app_source_config_errors(analysis: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        make_rollout(analysis=analysis)


def test_checks_failing_alike_are_named_together_in_one_reason() -> None:
    error = "cannot reach Prometheus at http://127.0.0.1:9/: connection refused"
    rollout = make_rollout(
        analysis={
            "checks": [
                {"name": "errors", "template": "error-rate", "max": "1%"},
                {"name": "p95", "template": "latency", "quantile": 0.95, "max": "250ms"},
            ]
        }
    )
    plan_ = plan(rollout, "v2", "v1")
    outcomes = {
        q: QueryOutcome(error=error)
        for q in (plan_.canary_requests_query, *(c.canary_query for c in plan_.checks))
    }
    verdict = judge_interval(rollout.analysis, plan_, outcomes, AT)
    assert verdict.verdict == "inconclusive"
    assert verdict.reason.startswith("errors, p95: ")
    assert verdict.reason.count(error) == 1, verdict.reason


# ------------------------------------------------------------------ chance in error rates

BENCH_CHECKS: list[dict[str, Any]] = [  # config/testpage.yaml's error-rate checks
    {"name": "errors", "template": "error-rate", "max": "1%"},
    {
        "name": "errors-vs-stable",
        "template": "error-rate",
        "relative": {"tolerance": "50%", "margin": "0.2%"},
    },
]


def test_a_healthy_canarys_chance_errors_pass_at_a_one_percent_baseline() -> None:
    # From bench/versus_argo.py: a healthy canary (1% errors, as the stable) measured 6 of
    # 225 and the stable 2 of 675 in one window; both checks failed on the rates alone.
    analysis, planned = setup(BENCH_CHECKS)
    values = {
        "errors": value(6 / 225),
        "errors-vs-stable": value(6 / 225),
        "errors-vs-stable:stable": value(2 / 675),
    }
    outcomes = outcomes_for(planned, values, value(225), value(675))
    verdict = judge_interval(analysis, planned, outcomes, AT)
    assert verdict.verdict == "pass", verdict.reason
    errors, relative = verdict.checks
    assert errors.reason == (
        "0.0266667 (6 of 225 requests) is beyond 0.01, "
        "as chance at 0.01 would make it 3% of the time"
    )
    assert "as chance at" in relative.reason

    compared_raw = setup(BENCH_CHECKS, significance="0%")
    raw = judge_interval(
        compared_raw[0],
        compared_raw[1],
        outcomes_for(compared_raw[1], values, value(225), value(675)),
        AT,
    )
    assert raw.verdict == "fail"
    assert [c.verdict for c in raw.checks] == ["fail", "fail"]


def test_a_canary_at_five_percent_fails_beyond_chance() -> None:
    analysis, planned = setup(BENCH_CHECKS)
    values = {
        "errors": value(11 / 225),
        "errors-vs-stable": value(11 / 225),
        "errors-vs-stable:stable": value(7 / 675),
    }
    verdict = judge_interval(
        analysis, planned, outcomes_for(planned, values, value(225), value(675)), AT
    )
    assert verdict.verdict == "fail"
    assert verdict.checks[0].reason == "0.0488889 is above the maximum 0.01 beyond chance"


def test_only_error_rates_over_the_counted_requests_are_tested_for_chance() -> None:
    # A custom query's value is not known to be errors / requests: compared as it is.
    analysis, planned = setup([{"name": "ratio", "query": "vector(0.02)", "max": "1%"}])
    outcomes = outcomes_for(planned, {"ratio": value(0.02)}, value(225))
    verdict = judge_interval(analysis, planned, outcomes, AT)
    assert verdict.verdict == "fail"
    assert verdict.checks[0].reason == "0.02 is above the maximum 0.01"
