"""PromQL templates: variables, escaping, the built-in queries."""

from __future__ import annotations

import pytest

from autocanary import promql


def test_variables_in_and_unknown_variables() -> None:
    template = 'rate(x{ns="{{ namespace }}", v="{{version}}", z="{{ nope }}"}[{{ interval }}])'
    assert promql.variables_in(template) == {"namespace", "version", "nope", "interval"}
    assert promql.unknown_variables(template) == {"nope"}
    assert promql.unknown_variables("up") == set()


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("v1", "v1"),
        ('v1"2', 'v1\\"2'),
        ("a\\b", "a\\\\b"),
        ("a\nb", "a\\nb"),
        ('\\"', '\\\\\\"'),  # backslash first, so a quote's escape is not escaped again
    ],
)
def test_escape_label_value(raw: str, escaped: str) -> None:
    assert promql.escape_label_value(raw) == escaped


def test_render_escapes_values_but_not_the_selector() -> None:
    rendered = promql.render(
        'x{ {{ selector }}, version="{{ version }}"}',
        {"selector": 'target="web"', "version": 'v1"} or vector(1) #'},
    )
    assert rendered == 'x{ target="web", version="v1\\"} or vector(1) #"}'


def test_render_unknown_variable_raises_key_error() -> None:
    with pytest.raises(KeyError, match="missing"):
        promql.render("{{ missing }}", {})


def test_render_tolerates_spacing_inside_braces() -> None:
    assert promql.render("{{rollout}}-{{   rollout   }}", {"rollout": "web"}) == "web-web"


VARS = {
    "selector": 'target="web"',
    "version": "v2",
    "window": "30s",
    "quantile": "0.99",
}


def test_builtin_error_rate_over_the_probe() -> None:
    query = promql.render(promql.builtin_query("error-rate", "probe"), VARS)
    assert query == (
        '(sum(increase(probe_requests_total{target="web", version="v2", code=~"5..|error"}[30s]))'
        " or vector(0))"
        ' / sum(increase(probe_requests_total{target="web", version="v2"}[30s]))'
    )


def test_builtin_error_rate_over_the_testpage() -> None:
    query = promql.render(promql.builtin_query("error-rate", "testpage"), VARS)
    # Only the application's own path counts: /healthz and /metrics are not traffic.
    assert (
        'testpage_requests_total{path="/", target="web", version="v2", code=~"5.."}[30s]' in query
    )
    assert "or vector(0)" in query


def test_builtin_latency_uses_the_quantile_and_the_histogram() -> None:
    query = promql.render(promql.builtin_query("latency", "probe"), {**VARS, "quantile": "0.95"})
    assert query == (
        "histogram_quantile(0.95, sum by (le) "
        '(rate(probe_request_duration_seconds_bucket{target="web", version="v2"}[30s])))'
    )


def test_builtin_request_rate() -> None:
    query = promql.render(promql.builtin_query("request-rate", "testpage"), VARS)
    assert query == 'sum(rate(testpage_requests_total{path="/", target="web", version="v2"}[30s]))'


@pytest.mark.parametrize(("source", "matchers"), [("probe", ""), ("testpage", 'path="/", ')])
def test_request_count_query(source: promql.Source, matchers: str) -> None:
    query = promql.render(promql.request_count_query(source), VARS)
    expected = (
        f'sum(increase({source}_requests_total{{{matchers}target="web", version="v2"}}[30s]))'
    )
    assert query == expected


@pytest.mark.parametrize("name", ["error-rate", "latency", "request-rate"])
@pytest.mark.parametrize("source", ["probe", "testpage"])
def test_builtins_use_only_known_variables(
    name: promql.TemplateName, source: promql.Source
) -> None:
    assert promql.unknown_variables(promql.builtin_query(name, source)) == set()


def test_default_selectors_use_known_variables() -> None:
    for selector in promql.DEFAULT_SELECTORS.values():
        assert promql.unknown_variables(selector) == set()
        assert "selector" not in promql.variables_in(selector)
