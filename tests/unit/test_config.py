"""The YAML config: valid files load; every problem is reported with file, line and field."""

from __future__ import annotations

import json
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from autocanary.config.loader import load_config, parse_config
from autocanary.config.models import Config, Percentage, SecretSource
from autocanary.errors import ConfigError, ConfigProblem

FULL = """\
prometheus:
  url: http://prometheus.monitoring:9090/
  timeout: 5s
  bearerTokenFile: /var/run/secrets/prom-token
alerts:
  sinks:
    - name: ops
      type: webhook
      url: {env: OPS_WEBHOOK_URL}
      on: [rolledBack, promoted, paused]
      timeout: 2s
      retries: 5
    - name: chat
      type: slack
      url: {file: /etc/autocanary/slack-url}
    - name: am
      type: alertmanager
      url: http://alertmanager:9093
      labels: {team: shop}
daemon:
  listen: ":9100"
  leaderElection:
    leaseName: autocanary-shop
    namespace: ops
    leaseDuration: 30s
    renewDeadline: 20s
    retryPeriod: 5s
  logFormat: json
  logLevel: debug
rollouts:
  - name: web
    namespace: shop
    stable: web
    canary: web-next
    versionLabel: app.kubernetes.io/version
    roleLabels: [track, tier]
    interval: 1m
    progressDeadline: 15m
    scaleDownStable: false
    steps:
      - {canary: 1, hold: 10m}
      - {canary: 25%, hold: 5m}
      - {canary: 100%}
    analysis:
      source: testpage
      selector: 'namespace="{{ namespace }}", app="web"'
      warmup: 20s
      minRequests: 50
      failureLimit: 1
      inconclusiveLimit: 5
      inconclusivePolicy: rollback
      checks:
        - name: errors
          template: error-rate
          max: 1%
        - name: p95
          template: latency
          quantile: 0.95
          source: probe
          max: 500ms
          relative: {tolerance: 20%, direction: higher-is-worse, margin: 50ms}
        - name: throughput
          query: sum(rate(http_requests_total{version="{{ version }}"}[{{ interval }}]))
          min: 1
    alerts: [ops, am]
  - name: api
    namespace: shop
    stable: api
    analysis:
      checks: [{name: errors, template: error-rate, max: 0.02}]
"""

MINIMAL = """\
prometheus:
  url: http://prometheus:9090
rollouts:
  - name: web
    namespace: shop
    stable: web
    analysis:
      checks:
        - name: errors
          template: error-rate
          max: 1%
"""


def problems_of(text: str) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "autocanary.yaml")
    assert info.value.problems, "a ConfigError must list its problems"
    return info.value.problems


def only_problem(text: str) -> ConfigProblem:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    return problems[0]


def line_of(text: str, fragment: str, occurrence: int = 1) -> int:
    """The 1-based line of the ``occurrence``-th line containing ``fragment``."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if fragment in line]
    assert len(hits) >= occurrence, f"{fragment!r} not in the config"
    return hits[occurrence - 1]


def with_change(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{old!r} must occur once"
    return text.replace(old, new)


# ------------------------------------------------------------------ valid configs


def test_full_config_loads_every_field() -> None:
    config = parse_config(FULL, "full.yaml")
    assert config.prometheus.url == "http://prometheus.monitoring:9090"  # trailing / dropped
    assert config.prometheus.timeout == timedelta(seconds=5)
    assert config.prometheus.bearer_token_file == "/var/run/secrets/prom-token"

    ops, chat, am = config.alerts.sinks
    assert ops.type == "webhook"
    assert ops.url == SecretSource(env="OPS_WEBHOOK_URL")
    assert ops.on == ["rolledBack", "promoted", "paused"]
    assert (ops.timeout, ops.retries) == (timedelta(seconds=2), 5)
    assert chat.type == "slack"
    assert chat.url == SecretSource(file="/etc/autocanary/slack-url")
    assert chat.on == ["rolledBack", "paused"]  # the default
    assert am.type == "alertmanager"
    assert am.url == SecretSource(literal="http://alertmanager:9093")
    assert am.labels == {"team": "shop"}

    daemon = config.daemon
    assert daemon.listen == ":9100"
    assert daemon.leader_election.lease_name == "autocanary-shop"
    assert daemon.leader_election.lease_duration == timedelta(seconds=30)
    assert (daemon.log_format, daemon.log_level) == ("json", "debug")

    web = config.rollout("web")
    assert web.canary_name == "web-next"
    assert web.version_label == "app.kubernetes.io/version"
    assert web.role_labels == ["track", "tier"]
    assert web.interval == timedelta(minutes=1)
    assert web.progress_deadline == timedelta(minutes=15)
    assert web.scale_down_stable is False
    assert [s.canary for s in web.steps] == [1, Percentage(0.25), Percentage(1.0)]
    assert [s.hold for s in web.steps] == [
        timedelta(minutes=10),
        timedelta(minutes=5),
        timedelta(0),
    ]
    analysis = web.analysis
    assert analysis.source == "testpage"
    assert analysis.effective_selector == 'namespace="{{ namespace }}", app="web"'
    assert analysis.warmup == timedelta(seconds=20)
    assert (analysis.min_requests, analysis.failure_limit) == (50, 1)
    assert (analysis.inconclusive_limit, analysis.inconclusive_policy) == (5, "rollback")
    errors, p95, throughput = analysis.checks
    assert errors.max == pytest.approx(0.01)
    assert p95.max == pytest.approx(0.5)  # 500ms as seconds
    assert p95.effective_quantile == 0.95
    assert p95.source == "probe"
    assert p95.relative is not None
    assert p95.relative.tolerance == pytest.approx(0.2)
    assert p95.relative.margin == pytest.approx(0.05)
    assert throughput.query is not None
    assert throughput.min == 1
    assert web.alerts == ["ops", "am"]

    api = config.rollout("api")
    assert api.canary_name == "api-canary"
    assert api.alerts is None
    assert api.analysis.checks[0].max == pytest.approx(0.02)


def test_minimal_config_gets_the_documented_defaults() -> None:
    config = parse_config(MINIMAL)
    assert config.alerts.sinks == []
    assert config.daemon.listen == "0.0.0.0:8080"
    assert config.daemon.leader_election.enabled is True
    assert config.daemon.settled_resync == timedelta(minutes=5)
    assert config.prometheus.timeout == timedelta(seconds=10)
    web = config.rollouts[0]
    assert web.canary_name == "web-canary"
    assert web.version_label == "version"
    assert web.role_labels == ["track"]
    assert web.interval == timedelta(seconds=30)
    assert web.progress_deadline == timedelta(minutes=10)
    assert web.scale_down_stable is True
    assert [(s.canary, s.hold) for s in web.steps] == [
        (1, timedelta(minutes=10)),
        (Percentage(0.1), timedelta(minutes=2)),
        (Percentage(0.5), timedelta(minutes=2)),
        (Percentage(1.0), timedelta(minutes=2)),
    ]
    analysis = web.analysis
    assert analysis.source == "probe"
    assert analysis.effective_selector == 'target="{{ rollout }}"'
    assert analysis.warmup == timedelta(minutes=1)  # cold starts are not judged
    assert (analysis.min_requests, analysis.failure_limit) == (20, 0)
    assert (analysis.inconclusive_limit, analysis.inconclusive_policy) == (3, "pause")
    assert analysis.checks[0].effective_quantile == 0.99


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "autocanary.yaml"
    path.write_text(MINIMAL, encoding="utf-8")
    assert load_config(path).rollouts[0].name == "web"


def test_load_config_names_the_file_in_problems(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(with_change(MINIMAL, "stable: web", "stable: Web"), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.file == str(path)
    assert str(problem).startswith(f"{path}:6: rollouts[0].stable: ")


def test_load_config_of_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_config(missing)
    assert info.value.problems[0].file == str(missing)


def test_config_rollout_lookup_names_the_known_ones() -> None:
    config = parse_config(FULL)
    with pytest.raises(KeyError, match=r"known: \['web', 'api'\]"):
        config.rollout("shop")


def test_problem_str_has_file_line_path_and_message() -> None:
    assert str(ConfigProblem("c.yaml", 3, "a.b", "bad")) == "c.yaml:3: a.b: bad"
    assert str(ConfigProblem("c.yaml", None, "", "bad")) == "c.yaml: bad"


# ------------------------------------------------------------------ one problem, located


@pytest.mark.parametrize(
    ("old", "new", "marker", "path", "message"),
    [
        (
            "    stable: web\n",
            "    stable: web\n    progresDeadline: 5m\n",
            "progresDeadline",
            "rollouts[0].progresDeadline",
            "unknown field 'progresDeadline' (did you mean 'progressDeadline'?)",
        ),
        (
            "    stable: web\n",
            "    stable: web\n    colour: blue\n",
            "colour",
            "rollouts[0].colour",
            "unknown field 'colour'",
        ),
        (
            "    stable: web\n",
            "    stable: web\n    interval: 30x\n",
            "interval",
            "rollouts[0].interval",
            "expected a duration like 500ms, 30s, 2m or 1h30m, got '30x'",
        ),
        (
            "    stable: web\n",
            "    stable: web\n    interval: 500ms\n",
            "interval",
            "rollouts[0].interval",
            "expected an interval of at least 1s, got 500ms",
        ),
        (
            "    stable: web\n",
            "    stable: web\n    interval: .inf\n",
            "interval",
            "rollouts[0].interval",
            "expected a duration of at most 36500d, got inf",
        ),
        (
            "    stable: web\n",
            "    stable: web\n    steps: [{canary: 150%}]\n",
            "steps",
            "rollouts[0].steps[0].canary",
            "expected a percentage above 0% and at most 100%, got '150%'",
        ),
        (
            "    stable: web\n",
            "    stable: web\n    steps: [{canary: 0}]\n",
            "steps",
            "rollouts[0].steps[0].canary",
            "a step needs at least 1 canary pod, got 0",
        ),
        (
            "    stable: web\n",
            "    stable: web\n    steps: []\n",
            "steps",
            "rollouts[0].steps",
            "List should have at least 1 item",
        ),
        (
            "    stable: web\n",
            "    stable: web\n    canary: web\n",
            "canary: web",
            "rollouts[0].canary",
            "'canary' must name a different Deployment than 'stable'",
        ),
        (
            "stable: web",
            "stable: Web_1",
            "stable:",
            "rollouts[0].stable",
            "expected a Kubernetes object name (lowercase letters, digits and '-'",
        ),
        (
            "    stable: web\n",
            "    stable: web\n    scaleDownStable: maybe\n",
            "scaleDownStable",
            "rollouts[0].scaleDownStable",
            'Input should be a valid boolean, unable to interpret input (got "maybe")',
        ),
        (
            "url: http://prometheus:9090",
            "url: prometheus:9090",
            "url:",
            "prometheus.url",
            "expected an http:// or https:// URL, got 'prometheus:9090'",
        ),
        (
            "          max: 1%\n",
            "          max: fast\n",
            "max:",
            "rollouts[0].analysis.checks[0].max",
            "expected a number, a percentage (1%) or a duration (500ms), got 'fast'",
        ),
        (
            "          max: 1%\n",
            "",
            "- name: errors",
            "rollouts[0].analysis.checks[0]",
            "a check needs a threshold: 'min', 'max' and/or 'relative'",
        ),
        (
            "          max: 1%\n",
            "          max: 1%\n          query: up\n",
            "- name: errors",
            "rollouts[0].analysis.checks[0]",
            "a check needs exactly one of 'template' or 'query'",
        ),
        (
            "          max: 1%\n",
            "          max: 1%\n          quantile: 0.9\n",
            "- name: errors",
            "rollouts[0].analysis.checks[0]",
            "'quantile' applies only to template: latency",
        ),
        (
            "          max: 1%\n",
            "          max: 1%\n          min: 5%\n",
            "- name: errors",
            "rollouts[0].analysis.checks[0]",
            "'min' (0.05) is above 'max' (0.01)",
        ),
        (
            "          template: error-rate\n",
            "          query: 'up{job=\"{{ job }}\"}'\n",
            "- name: errors",
            "rollouts[0].analysis.checks[0]",
            "unknown template variable(s) job in query; known: namespace, rollout",
        ),
        (
            "          template: error-rate\n",
            "          template: error-ratio\n",
            "template:",
            "rollouts[0].analysis.checks[0].template",
            "Input should be 'error-rate', 'latency' or 'request-rate'",
        ),
        (
            "    analysis:\n",
            "    analysis:\n      inconclusivePolicy: shrug\n",
            "inconclusivePolicy",
            "rollouts[0].analysis.inconclusivePolicy",
            "Input should be 'pause' or 'rollback'",
        ),
        (
            "    analysis:\n",
            "    analysis:\n      minRequests: -1\n",
            "minRequests",
            "rollouts[0].analysis.minRequests",
            "Input should be greater than or equal to 0",
        ),
        (
            "    analysis:\n",
            "    analysis:\n      selector: 'app=\"{{ app }}\"'\n",
            "    analysis:",
            "rollouts[0].analysis",
            "unknown template variable(s) in selector: ['app']",
        ),
        (
            "    analysis:\n",
            "    analysis:\n      selector: '{{ selector }}'\n",
            "    analysis:",
            "rollouts[0].analysis",
            "unknown template variable(s) in selector: ['selector']",
        ),
        (
            "        - name: errors\n",
            "        - name: errors\n          relative: {tolerance: 20}\n",
            "relative",
            "rollouts[0].analysis.checks[0].relative.tolerance",
            "expected a percentage like 10% or 2.5%, got 20",
        ),
    ],
)
def test_each_problem_is_located(old: str, new: str, marker: str, path: str, message: str) -> None:
    text = with_change(MINIMAL, old, new)
    problem = only_problem(text)
    assert problem.file == "autocanary.yaml"
    assert problem.path == path
    assert message in problem.message
    assert problem.line == line_of(text, marker)


def test_missing_field_is_named() -> None:
    text = with_change(MINIMAL, "    analysis:\n", "    unused:\n")
    problems = problems_of(text)
    assert [(p.line, p.path, p.message) for p in problems] == [
        (line_of(text, "- name: web"), "rollouts[0]", "required field 'analysis' is missing"),
        (line_of(text, "unused:"), "rollouts[0].unused", "unknown field 'unused'"),
    ]


def test_missing_top_level_fields() -> None:
    problems = problems_of("alerts: {}\n")
    assert {(p.line, p.path, p.message) for p in problems} == {
        (1, "", "required field 'prometheus' is missing"),
        (
            1,
            "",
            "'rollouts' needs at least one rollout, unless discovery is enabled "
            "(rollouts declared on their Deployments)",
        ),
    }


@pytest.mark.parametrize("text", ["", "# only a comment\n", "- a\n- b\n", "just a string\n"])
def test_a_document_that_is_not_a_mapping(text: str) -> None:
    problem = only_problem(text)
    assert (problem.line, problem.path) == (1, "")
    assert "expected a mapping with 'prometheus' and 'rollouts'" in problem.message


# ------------------------------------------------------------------ alerts


SINKS = """\
alerts:
  sinks:
    - name: ops
      type: webhook
      url: {env: OPS_URL}
"""


def test_unknown_sink_in_rollout_alerts_is_located_at_the_rollout() -> None:
    text = SINKS + with_change(
        MINIMAL, "    stable: web\n", "    stable: web\n    alerts: [ops, pager]\n"
    )
    problem = only_problem(text)
    assert problem.path == "rollouts[0].alerts[1]"
    assert problem.line == line_of(text, "alerts: [ops, pager]")
    assert problem.message == (
        "rollout 'web' routes alerts to unknown sink 'pager'; defined sinks: ['ops']"
    )


def test_unknown_sink_without_any_sinks() -> None:
    text = with_change(MINIMAL, "    stable: web\n", "    stable: web\n    alerts: [ops]\n")
    assert "defined sinks: none" in only_problem(text).message


def test_known_sinks_route() -> None:
    text = SINKS + with_change(MINIMAL, "    stable: web\n", "    stable: web\n    alerts: [ops]\n")
    assert parse_config(text).rollouts[0].alerts == ["ops"]


@pytest.mark.parametrize(
    ("sink_line", "path", "message"),
    [
        ("url: {env: ''}", "alerts.sinks[0].url", "expected a URL string, {env: VARIABLE}"),
        ("url: {vault: x}", "alerts.sinks[0].url", "expected a URL string"),
        ("url: ftp://x", "alerts.sinks[0].url", "expected an http:// or https:// URL"),
        ("on: [rolledBak]", "alerts.sinks[0].on[0]", "Input should be 'releaseDetected'"),
        ("on: []", "alerts.sinks[0].on", "List should have at least 1 item"),
        ("retries: 11", "alerts.sinks[0].retries", "less than or equal to 10"),
    ],
)
def test_sink_problems(sink_line: str, path: str, message: str) -> None:
    text = with_change(
        SINKS, "      url: {env: OPS_URL}\n", f"      url: {{env: OPS_URL}}\n      {sink_line}\n"
    )
    if sink_line.startswith("url"):
        text = with_change(text, "      url: {env: OPS_URL}\n", "")
    text += MINIMAL
    problem = only_problem(text)
    assert problem.path == path
    assert message in problem.message
    assert problem.line == line_of(text, sink_line.split(":", maxsplit=1)[0] + ":", 1)


def test_unknown_sink_type_is_reported_at_the_sink() -> None:
    text = with_change(SINKS, "type: webhook", "type: pagerduty") + MINIMAL
    problem = only_problem(text)
    assert problem.path == "alerts.sinks[0]"
    assert problem.line == line_of(text, "- name: ops")
    assert "'webhook', 'slack', 'alertmanager'" in problem.message


def test_duplicate_sink_names() -> None:
    text = SINKS + "    - name: ops\n      type: slack\n      url: http://hooks\n" + MINIMAL
    problem = only_problem(text)
    assert (problem.path, problem.line) == ("alerts.sinks[1].name", line_of(text, "- name: ops", 2))
    assert problem.message == "duplicate alert sink name 'ops'"


def test_secret_sources_resolve_when_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPS_URL", " https://hooks.example/abc \n")
    assert SecretSource(env="OPS_URL").resolve() == "https://hooks.example/abc"
    assert SecretSource(env="OPS_URL").describe() == "env OPS_URL"
    monkeypatch.delenv("OPS_URL")
    with pytest.raises(ValueError, match="environment variable OPS_URL is not set or empty"):
        SecretSource(env="OPS_URL").resolve()
    secret = tmp_path / "url"
    secret.write_text("https://hooks.example/def\n", encoding="utf-8")
    assert SecretSource(file=str(secret)).resolve() == "https://hooks.example/def"
    assert SecretSource(file=str(secret)).describe() == f"file {secret}"
    with pytest.raises(ValueError, match="cannot read secret file"):
        SecretSource(file=str(tmp_path / "absent")).resolve()
    assert SecretSource(literal="https://x").describe() == "inline value"  # never the value


# ------------------------------------------------------------------ cross-field rules


def test_duplicate_rollout_names_and_canaries() -> None:
    rollouts = MINIMAL.split("rollouts:\n", 1)[1]
    text = MINIMAL + rollouts
    second = line_of(text, "- name: web", 2)
    # The same rollout twice: its name and its canary are both taken, at the second one.
    assert [(p.path, p.line, p.message) for p in problems_of(text)] == [
        ("rollouts[1].name", second, "duplicate rollout name 'web'"),
        ("rollouts[1]", second, "duplicate canary Deployment 'shop/web-canary'"),
    ]
    renamed = MINIMAL + rollouts.replace("- name: web", "- name: web2")
    problem = only_problem(renamed)
    assert (problem.path, problem.line) == ("rollouts[1]", second)
    assert problem.message == "duplicate canary Deployment 'shop/web-canary'"


def test_leader_election_timings_must_be_ordered() -> None:
    text = "daemon:\n  leaderElection:\n    retryPeriod: 20s\n" + MINIMAL
    problem = only_problem(text)
    assert (problem.path, problem.line) == ("daemon.leaderElection", 2)
    assert "expected retryPeriod < renewDeadline < leaseDuration" in problem.message


def test_a_settled_resync_under_a_second_is_refused_where_it_is() -> None:
    problem = only_problem("daemon:\n  settledResync: 200ms\n" + MINIMAL)
    assert (problem.path, problem.line) == ("daemon.settledResync", 2)
    assert problem.message == "expected a resync of at least 1s, got 200ms"


# ------------------------------------------------------------------ thresholds


@pytest.mark.parametrize(
    ("template", "written", "value"),
    [
        ("error-rate", "1%", 0.01),
        ("error-rate", "100%", 1.0),
        ("error-rate", "0.25", 0.25),
        ("error-rate", "'0.25'", 0.25),
        ("error-rate", "1e-3", 0.001),
        ("latency", "500ms", 0.5),
        ("latency", "1.5s", 1.5),
        ("latency", "10s", 10.0),
        ("latency", "0", 0.0),
        ("latency", "0.25", 0.25),
        ("request-rate", "3", 3.0),
        ("request-rate", "2.5", 2.5),
    ],
)
def test_thresholds_in_the_unit_of_their_check(template: str, written: str, value: float) -> None:
    text = with_change(
        MINIMAL,
        "template: error-rate\n          max: 1%",
        f"template: {template}\n          max: {written}",
    )
    assert parse_config(text).rollouts[0].analysis.checks[0].max == pytest.approx(value)


@pytest.mark.parametrize(
    ("template", "written", "message"),
    [
        (
            "error-rate",
            "1",
            "error-rate is a ratio between 0 and 1, so 1 would mean 100% of requests failing; "
            "write 1% for 1 percent, or 100% if that is really meant",
        ),
        ("error-rate", "5", "so 5 would mean 500% of requests failing; write 5% for 5 percent"),
        (
            "error-rate",
            "500ms",
            "error-rate is a ratio: write a percentage like 1%, not a duration ('500ms')",
        ),
        ("error-rate", "150%", "error-rate is a ratio: at most 100%, got '150%'"),
        ("error-rate", "-0.1", "error-rate cannot be negative, got -0.1"),
        ("latency", "500", "did you mean 500ms?"),
        (
            "latency",
            "15s",
            "latency from the built-in histograms never exceeds 10s (their largest bucket), "
            "so '15s' can never be crossed",
        ),
        ("latency", "5%", "latency is a duration: write 500ms or 0.5s, not a percentage ('5%')"),
        ("request-rate", "5%", "request-rate is in requests per second: write a number, not '5%'"),
        ("request-rate", "2m", "request-rate is in requests per second: write a number, not '2m'"),
        ("error-rate", ".inf", "Input should be a finite number"),
        ("latency", "-.inf", "Input should be a finite number"),
        (
            "error-rate",
            "fast",
            "expected a number, a percentage (1%) or a duration (500ms), got 'fast'",
        ),
        ("error-rate", "'\uff11%'", "expected a percentage like 10% or 2.5%, got '\uff11%'"),
    ],
)
def test_thresholds_that_cannot_mean_what_they_say(
    template: str, written: str, message: str
) -> None:
    text = with_change(
        MINIMAL,
        "template: error-rate\n          max: 1%",
        f"template: {template}\n          max: {written}",
    )
    problem = only_problem(text)
    assert (problem.path, problem.line) == (
        "rollouts[0].analysis.checks[0].max",
        line_of(text, "max:"),
    )
    assert message in problem.message


def test_latency_check_with_duration_thresholds_and_relative() -> None:
    text = with_change(
        MINIMAL,
        "          template: error-rate\n          max: 1%\n",
        "          template: latency\n          min: 1ms\n          max: 250ms\n"
        "          relative: {tolerance: 10%, direction: lower-is-worse}\n",
    )
    check = parse_config(text).rollouts[0].analysis.checks[0]
    assert (check.min, check.max) == (pytest.approx(0.001), pytest.approx(0.25))
    assert check.relative is not None
    assert check.relative.direction == "lower-is-worse"
    assert check.effective_quantile == 0.99


# ------------------------------------------------------------------ several problems, YAML


def test_several_problems_are_all_reported_in_line_order() -> None:
    text = SINKS + textwrap.dedent(
        """\
        prometheus:
          url: prometheus
          timout: 5s
        rollouts:
          - name: web
            namespace: shop
            stable: web
            interval: soon
            steps: [{canary: 0%}]
            analysis:
              checks:
                - name: errors
                  template: error-rate
          - name: api
            namespace: Shop
            stable: api
            alerts: [pager]
            analysis:
              checks: [{name: errors, template: error-rate, max: 1%}]
        """
    )
    problems = problems_of(text)
    located = [(p.line, p.path) for p in problems]
    assert located == [
        (line_of(text, "url: prometheus"), "prometheus.url"),
        (line_of(text, "timout"), "prometheus.timout"),
        (line_of(text, "interval: soon"), "rollouts[0].interval"),
        (line_of(text, "canary: 0%"), "rollouts[0].steps[0].canary"),
        (line_of(text, "- name: errors"), "rollouts[0].analysis.checks[0]"),
        (line_of(text, "namespace: Shop"), "rollouts[1].namespace"),
        (line_of(text, "alerts: [pager]"), "rollouts[1].alerts[0]"),
    ]
    assert "did you mean 'timeout'?" in problems[1].message
    assert str(problems[0]).startswith(f"autocanary.yaml:{problems[0].line}: prometheus.url: ")


def test_cross_reference_problems_come_with_field_problems() -> None:
    text = SINKS + with_change(
        MINIMAL, "    stable: web\n", "    stable: web\n    alerts: [pager]\n"
    )
    text = with_change(text, "url: http://prometheus:9090", "url: nope")
    assert [p.path for p in problems_of(text)] == ["prometheus.url", "rollouts[0].alerts[0]"]


def test_duplicate_yaml_keys_are_errors_with_the_line() -> None:
    text = with_change(MINIMAL, "    stable: web\n", "    stable: web\n    stable: api\n")
    problem = only_problem(text)
    assert problem.line == line_of(text, "stable: api")
    assert problem.message == "invalid YAML: duplicate key 'stable'"


def test_yaml_syntax_error_has_the_line() -> None:
    text = with_change(MINIMAL, "    stable: web\n", "    stable: [web\n")
    problem = only_problem(text)
    assert problem.message.startswith("invalid YAML: ")
    assert problem.line is not None
    assert problem.line >= line_of(text, "stable: [web")


def test_yaml_tab_indentation_error() -> None:
    problem = only_problem("prometheus:\n\turl: http://p\n")
    assert problem.line == 2
    assert problem.message.startswith("invalid YAML: ")


def test_yaml_anchors_and_merge_keys_work() -> None:
    text = textwrap.dedent(
        """\
        prometheus: {url: 'http://p:9090'}
        x-analysis: &analysis
          checks: [{name: errors, template: error-rate, max: 1%}]
        rollouts:
          - {name: web, namespace: shop, stable: web, analysis: *analysis}
        """
    )
    # Unknown top-level keys (here the anchor holder) are still errors, located.
    problem = only_problem(text)
    assert (problem.line, problem.path) == (2, "x-analysis")


# ------------------------------------------------------------------ schema


def _keys(schema: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "properties" and isinstance(value, dict):
                found |= set(value)
            found |= _keys(value)
    elif isinstance(schema, list):
        for item in schema:
            found |= _keys(item)
    return found


def test_schema_is_json_with_camel_case_keys() -> None:
    schema = Config.model_json_schema(by_alias=True)
    json.loads(json.dumps(schema))  # plain JSON
    assert schema["type"] == "object"
    assert set(schema["required"]) == {"prometheus"}
    assert schema["additionalProperties"] is False
    keys = _keys(schema)
    for key in (
        "progressDeadline",
        "scaleDownStable",
        "versionLabel",
        "roleLabels",
        "minRequests",
        "failureLimit",
        "inconclusiveLimit",
        "inconclusivePolicy",
        "leaderElection",
        "bearerTokenFile",
    ):
        assert key in keys
    assert not {k for k in keys if "_" in k}, "snake_case keys leaked into the schema"


def test_schema_refs_resolve_and_every_object_forbids_unknown_keys() -> None:
    schema = Config.model_json_schema(by_alias=True)
    defs = schema["$defs"]
    text = json.dumps(schema)
    for name in defs:
        assert f'"#/$defs/{name}"' in text or name == "Config"
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/$defs/')[1:]}:
        assert ref in defs
    for name, definition in defs.items():
        if definition.get("type") == "object" and "properties" in definition:
            assert definition.get("additionalProperties") is False, name


def test_schema_describes_units() -> None:
    defs = Config.model_json_schema(by_alias=True)["$defs"]
    interval = defs["RolloutConfig"]["properties"]["interval"]
    assert interval["default"] == "30s"
    assert {"type": "number", "minimum": 0, "description": "seconds"} in interval["anyOf"]
    check_max = defs["CheckConfig"]["properties"]["max"]
    kinds = [alt.get("type") for alt in check_max["anyOf"]]
    assert kinds.count("string") == 2, "thresholds accept '1%' and '500ms'"
    step = defs["StepConfig"]["properties"]["canary"]
    assert {alt["type"] for alt in step["anyOf"]} == {"integer", "string"}


def test_schema_examples_validate_as_config() -> None:
    # The defaults the schema advertises are accepted back by the loader.
    defs = Config.model_json_schema(by_alias=True)["$defs"]
    rollout_props: dict[str, Any] = defs["RolloutConfig"]["properties"]
    text = with_change(
        MINIMAL,
        "    stable: web\n",
        "    stable: web\n"
        f"    interval: {rollout_props['interval']['default']}\n"
        f"    progressDeadline: {rollout_props['progressDeadline']['default']}\n",
    )
    assert parse_config(text).rollouts[0].interval == timedelta(seconds=30)


def test_yaml_1_1_booleans_are_plain_words() -> None:
    # 'on:' is the sinks' key, not the boolean True; yes/no/off still work where a bool is due.
    text = SINKS.replace("url: {env: OPS_URL}", "url: {env: OPS_URL}\n      on: [promoted]")
    text += "daemon: {leaderElection: {enabled: off}}\n"
    text += with_change(MINIMAL, "    stable: web\n", "    stable: web\n    scaleDownStable: no\n")
    config = parse_config(text)
    assert config.alerts.sinks[0].on == ["promoted"]
    assert config.daemon.leader_election.enabled is False
    assert config.rollouts[0].scale_down_stable is False


def test_alertmanager_label_names_are_checked_at_load() -> None:
    text = (
        "alerts:\n  sinks:\n    - name: am\n      type: alertmanager\n"
        "      url: http://am:9093\n      labels: {team: web, bad-name: x}\n" + MINIMAL
    )
    problem = only_problem(text)
    assert problem.path == "alerts.sinks[0].labels"
    assert "invalid Prometheus label name(s) ['bad-name']" in problem.message
    assert problem.line == line_of(text, "labels:")


def test_sequential_judge_alone_is_a_complete_analysis() -> None:
    text = with_change(
        MINIMAL,
        MINIMAL[MINIMAL.index("    analysis:") :],
        "    analysis:\n      sequential: {latencyThresholds: [100ms, 0.5]}\n",
    )
    config = parse_config(text)
    sequential = config.rollouts[0].analysis.sequential
    assert sequential is not None
    assert sequential.latency_thresholds == [0.1, 0.5]
    assert config.rollouts[0].analysis.checks == []


def test_an_analysis_needs_checks_or_the_sequential_judge() -> None:
    text = with_change(
        MINIMAL, MINIMAL[MINIMAL.index("    analysis:") :], "    analysis:\n      warmup: 10s\n"
    )
    assert "at least one check, or 'sequential" in only_problem(text).message


def test_sequential_thresholds_must_be_bucket_boundaries() -> None:
    text = with_change(
        MINIMAL,
        MINIMAL[MINIMAL.index("    analysis:") :],
        "    analysis:\n      sequential: {latencyThresholds: [123ms]}\n",
    )
    assert "not bucket boundaries" in only_problem(text).message


@pytest.mark.parametrize(
    ("setting", "field", "message"),
    [
        ("latencyTolerance: 10", "latencyTolerance", "percentage"),
        ("noiseFloor: -0.1", "noiseFloor", "greater than or equal to 0"),
        ("criticalErrorExcess: 2", "criticalErrorExcess", "percentage"),
    ],
)
def test_sequential_judge_settings_are_located(setting: str, field: str, message: str) -> None:
    text = with_change(
        MINIMAL,
        MINIMAL[MINIMAL.index("    analysis:") :],
        f"    analysis:\n      sequential:\n        {setting}\n",
    )
    problem = only_problem(text)
    assert problem.path == f"rollouts[0].analysis.sequential.{field}"
    assert message in problem.message
    assert problem.line == line_of(text, setting)


def test_a_config_that_is_not_utf8_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(MINIMAL.encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.file == str(path)
    assert "not UTF-8 text" in problem.message
