"""``--set [VARIANT:]PATH=VALUE``: parsing, grouping into variants, applying with validation."""

from __future__ import annotations

import pytest

from autocanary.backtest import overrides
from autocanary.backtest.errors import OverrideError
from autocanary.backtest.report import Variant
from autocanary.config.loader import parse_config
from autocanary.config.models import Config

CONFIG = """
prometheus: {url: http://127.0.0.1:9090}
alerts:
  sinks:
    - {name: hook, type: webhook, url: {env: HOOK_URL}}
rollouts:
  - name: shop
    namespace: demo
    stable: shop
    interval: 1m
    alerts: [hook]
    steps: [{canary: 1, hold: 2m}, {canary: 100%, hold: 2m}]
    analysis:
      failureLimit: 1
      checks:
        - {name: error-rate, template: error-rate, max: 2%}
        - {name: latency-p99, template: latency, quantile: 0.99, max: 500ms}
        - {name: errors-vs-stable, template: error-rate, relative: {tolerance: 20%}}
  - name: other
    namespace: demo
    stable: other
    analysis:
      checks: [{name: error-rate, template: error-rate, max: 1%}]
"""


@pytest.fixture
def config() -> Config:
    return parse_config(CONFIG)


def apply(config: Config, *specs: str) -> tuple[Variant, Config]:
    (_, _), (variant, changes) = overrides.variants(specs)
    rollout = overrides.apply(config, config.rollout("shop"), changes)
    return variant, config.model_copy(update={"rollouts": [rollout]})


def test_parse_reads_value_as_yaml_and_splits_the_path() -> None:
    o = overrides.parse_override("analysis.checks.error-rate.max=0.05")
    assert (o.variant, o.path, o.value) == (
        "custom",
        ("analysis", "checks", "error-rate", "max"),
        0.05,
    )
    o = overrides.parse_override("loose:analysis.checks.error-rate.relative={tolerance: 50%}")
    assert o.variant == "loose"
    assert o.value == {"tolerance": "50%"}
    assert o.text == "analysis.checks.error-rate.relative={tolerance: 50%}"
    # A value may contain '=' and ':' (PromQL); only the first '=' splits.
    o = overrides.parse_override('analysis.selector=job="a:b",x=~"y=z"')
    assert o.value == 'job="a:b",x=~"y=z"'


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("analysis.failureLimit", "expected [VARIANT:]PATH=VALUE"),
        ("analysis.failureLimit=", "no value after '='; use null"),
        ("analysis..max=1", "empty part in the path"),
        ("analysis.checks=[unclosed", "not valid YAML"),
    ],
)
def test_parse_rejects_malformed_overrides(spec: str, expected: str) -> None:
    with pytest.raises(OverrideError) as raised:
        overrides.parse_override(spec)
    assert str(raised.value).startswith(f"--set {spec!r}: ")
    assert expected in str(raised.value)


def test_variants_group_by_prefix_after_the_baseline() -> None:
    groups = overrides.variants(
        ["a.b=1", "loose:analysis.failureLimit=3", "c.d=2", "loose:analysis.minRequests=5"]
    )
    assert [(v.name, v.overrides) for v, _ in groups] == [
        ("config", ()),
        ("custom", ("a.b=1", "c.d=2")),
        ("loose", ("analysis.failureLimit=3", "analysis.minRequests=5")),
    ]


def test_the_baseline_name_is_reserved() -> None:
    with pytest.raises(OverrideError, match="'config' names the rollout as configured"):
        overrides.variants(["config:analysis.failureLimit=3"])


def test_apply_changes_only_the_addressed_fields(config: Config) -> None:
    base = config.rollout("shop")
    _, changed = apply(
        config,
        "analysis.checks.error-rate.max=5%",
        "analysis.failure_limit=3",  # snake_case works too
        "steps.0.hold=5m",
        "analysis.checks.errors-vs-stable.relative.tolerance=50%",
    )
    rollout = changed.rollout("shop")
    assert rollout.analysis.checks[0].max == pytest.approx(0.05)
    assert rollout.analysis.failure_limit == 3
    assert rollout.steps[0].hold.total_seconds() == 300
    assert rollout.analysis.checks[2].relative is not None
    assert rollout.analysis.checks[2].relative.tolerance == pytest.approx(0.5)
    # Everything else is as configured.
    assert rollout.analysis.checks[1] == base.analysis.checks[1]
    assert rollout.steps[1] == base.steps[1]
    assert rollout.interval == base.interval


def test_null_unsets_and_no_overrides_keep_the_rollout(config: Config) -> None:
    base = config.rollout("shop")
    assert overrides.apply(config, base, []) is base
    _, changed = apply(
        config,
        "analysis.checks.latency-p99.max=null",
        "analysis.checks.latency-p99.min=0.001",
    )
    check = changed.rollout("shop").analysis.checks[1]
    assert (check.max, check.min) == (None, 0.001)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "analysis.failurLimit=2",
            "--set analysis.failurLimit=2: unknown field 'failurLimit' in analysis "
            "(did you mean 'failureLimit'?)",
        ),
        (
            "analysis.checks.errors.max=1",
            "no element 'errors' in analysis.checks; known: error-rate, latency-p99, "
            "errors-vs-stable",
        ),
        ("steps.7.hold=1m", "no element '7' in steps"),
        ("interval.seconds=3", "interval is a value ('1m'), it has no field 'seconds'"),
    ],
)
def test_paths_that_address_nothing_say_what_exists(
    config: Config, spec: str, expected: str
) -> None:
    with pytest.raises(OverrideError) as raised:
        apply(config, spec)
    assert expected in str(raised.value)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "analysis.checks.error-rate.max=abc",
            "analysis.checks.error-rate.max: expected a number, a percentage (1%) or a "
            "duration (500ms), got 'abc'",
        ),
        ("analysis.checks.latency-p99.min=2s", "analysis.checks.latency-p99: 'min' (2.0) is above"),
        ("analysis.failureLimit=-1", "analysis.failureLimit: Input should be greater than"),
        ("alerts=[nowhere]", "routes alerts to unknown sink 'nowhere'"),
    ],
)
def test_invalid_values_fail_like_the_config_file_would(
    config: Config, spec: str, expected: str
) -> None:
    with pytest.raises(OverrideError) as raised:
        apply(config, spec)
    message = str(raised.value)
    assert message.startswith(f"variant 'custom' (--set {spec}) is not a valid rollout: ")
    assert expected in message


def test_other_rollouts_are_left_alone(config: Config) -> None:
    (_, _), (_, changes) = overrides.variants(["analysis.failureLimit=4"])
    other = overrides.apply(config, config.rollout("other"), changes)
    assert other.name == "other"
    assert other.analysis.failure_limit == 4
    assert config.rollout("shop").analysis.failure_limit == 1
