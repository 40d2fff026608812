"""A rollout declared in its stable Deployment's annotation: over the defaults, errors located."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from autocanary.config.loader import parse_config, parse_declaration
from autocanary.errors import ConfigError

SOURCE = "Deployment shop/web annotation autocanary.io/rollout"
DEFAULTS: dict[str, Any] = {
    "interval": "20s",
    "analysis": {
        "warmup": "30s",
        "minRequests": 50,
        "checks": [{"name": "error-rate", "template": "error-rate", "max": "1%"}],
    },
}


def declare(text: str, defaults: dict[str, Any] | None = None, sinks: tuple[str, ...] = ()) -> Any:
    return parse_declaration(
        text,
        SOURCE,
        namespace="shop",
        deployment="web",
        defaults=DEFAULTS if defaults is None else defaults,
        sinks=list(sinks),
    )


def problems(text: str, **kw: Any) -> list[tuple[int | None, str, str]]:
    with pytest.raises(ConfigError) as caught:
        declare(text, **kw)
    for p in caught.value.problems:
        assert p.file == SOURCE
    return [(p.line, p.path, p.message) for p in caught.value.problems]


def test_an_empty_annotation_is_the_defaults_for_this_deployment() -> None:
    rollout = declare("")
    assert (rollout.name, rollout.namespace, rollout.stable) == ("web", "shop", "web")
    assert rollout.canary_name == "web-canary"
    assert rollout.interval == timedelta(seconds=20)
    assert [c.name for c in rollout.analysis.checks] == ["error-rate"]


def test_the_annotation_overrides_the_defaults_mapping_by_mapping() -> None:
    text = (
        "name: web-shop\n"
        "analysis:\n"
        "  checks:\n"
        "    - {name: p99, template: latency, quantile: 0.99, max: 400ms}\n"
    )
    rollout = declare(text)
    assert rollout.name == "web-shop"
    # The defaults' warm-up and minRequests stay; the checks are the annotation's.
    assert rollout.analysis.warmup == timedelta(seconds=30)
    assert rollout.analysis.min_requests == 50
    assert [c.name for c in rollout.analysis.checks] == ["p99"]
    assert rollout.interval == timedelta(seconds=20)


def test_json_is_accepted_as_yaml() -> None:
    rollout = declare('{"interval": "45s", "canary": "web-next"}')
    assert rollout.interval == timedelta(seconds=45)
    assert rollout.canary_name == "web-next"


def test_problems_are_located_by_line_in_the_annotation() -> None:
    text = (
        "interval: 30s\n"
        "analysis:\n"
        "  checks:\n"
        "    - {name: errors, template: error-rate, max: 150}\n"
        "  warmpu: 10s\n"
    )
    found = problems(text)
    assert (5, "analysis.warmpu", "unknown field 'warmpu' (did you mean 'warmup'?)") in found
    [(line, path, message)] = [p for p in found if p[1].startswith("analysis.checks")]
    assert (line, path) == (4, "analysis.checks[0].max")
    assert "error rate" in message or "%" in message


def test_the_namespace_and_stable_are_the_deployments_own() -> None:
    assert problems("namespace: other\nstable: api\n") == [
        (1, "namespace", "'namespace' is the annotated Deployment's own (shop); remove it"),
        (2, "stable", "'stable' is the annotated Deployment's own (web); remove it"),
    ]


def test_an_unknown_sink_and_a_canary_equal_to_the_stable_are_found() -> None:
    found = problems("alerts: [pager]\ncanary: web\n", sinks=("slack",))
    assert (
        2,
        "canary",
        "'canary' must name a different Deployment than 'stable'",
    ) in found
    assert any(
        line == 1 and "unknown sink 'pager'" in message and "slack" in message
        for line, _, message in found
    )


def test_invalid_yaml_and_a_non_mapping_are_refused_with_their_line() -> None:
    [(line, _, message)] = problems("interval: 30s\nanalysis: [unclosed\n")
    assert line is not None
    assert line >= 2
    assert message.startswith("invalid YAML")
    [(line, _, message)] = problems("- a\n- b\n")
    assert line == 1
    assert message.startswith("expected a mapping of rollout settings")


def test_without_defaults_the_analysis_must_be_declared() -> None:
    assert problems("", defaults={}) == [(None, "analysis", "required field 'analysis' is missing")]


# ---- the central config's discovery section ---------------------------------------------------

BASE = "prometheus: {url: http://prometheus:9090}\n"


def test_discovery_lets_the_config_file_have_no_rollouts_of_its_own() -> None:
    config = parse_config(BASE + "discovery:\n  enabled: true\n  namespaces: [shop]\n")
    assert config.rollouts == []
    assert config.discovery.namespaces == ["shop"]
    assert config.discovery.interval == timedelta(seconds=10)


def test_invalid_defaults_are_refused_at_load_where_they_are() -> None:
    text = (
        BASE
        + "discovery:\n"
        + "  enabled: true\n"
        + "  defaults:\n"
        + "    interval: 10ms\n"
        + "    stable: web\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    [problem] = caught.value.problems
    assert (problem.line, problem.path) == (4, "discovery.defaults")
    assert problem.message == "'stable' cannot have a default: each declaration has its own"

    text = BASE + "discovery:\n  enabled: true\n  defaults:\n    interval: 10ms\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    [problem] = caught.value.problems
    assert problem.path == "discovery.defaults"
    assert problem.message == "interval: expected an interval of at least 1s, got 10ms"
