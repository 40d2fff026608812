"""Bad config files, as a new user writes them: each refused with a located problem.

Every case is a small change to a valid file; the assertion is the field, the
line and the words of the message, never just "it failed". Cases that used to
be accepted although they cannot mean what they say are here too, as are
hostile files (alias bombs, deep nesting) that must fail fast and small.
"""

from __future__ import annotations

import re
import resource
import time
from typing import Any

import pytest

from autocanary.config.loader import MAX_DEPTH, parse_config
from autocanary.config.models import Config
from autocanary.errors import ConfigError, ConfigProblem

VALID = """\
prometheus:
  url: http://prometheus:9090
alerts:
  sinks:
    - name: ops
      type: webhook
      url: {env: OPS_URL}
daemon:
  listen: 0.0.0.0:8080
rollouts:
  - name: web
    namespace: shop
    stable: web
    versionLabel: version
    progressDeadline: 5m
    steps:
      - {canary: 1, hold: 2m}
      - {canary: 50%, hold: 2m}
    analysis:
      warmup: 30s
      checks:
        - name: errors
          template: error-rate
          max: 1%
        - name: slow
          template: latency
          max: 500ms
        - name: custom
          query: sum(rate(x{a="b"}[5m]))
          max: 5
    alerts: [ops]
"""


def problems_of(text: str) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "bad.yaml")
    return info.value.problems


def line_of(text: str, fragment: str, occurrence: int = 1) -> int:
    hits = [i for i, line in enumerate(text.splitlines(), 1) if fragment in line]
    return hits[occurrence - 1]


def test_the_base_of_the_corpus_is_valid() -> None:
    assert parse_config(VALID).rollouts[0].name == "web"


# (name, old, new, path, message fragment); the problem is expected at the line of `new`'s
# first line.
CASES = [
    (
        "error rate of 1",
        "max: 1%",
        "max: 1",
        "rollouts[0].analysis.checks[0].max",
        "would mean 100% of requests failing; write 1% for 1 percent, or 100%",
    ),
    (
        "latency of 500 s",
        "max: 500ms",
        "max: 500",
        "rollouts[0].analysis.checks[1].max",
        "never exceeds 10s (their largest bucket), so 500 can never be crossed; a bare number "
        "is seconds: did you mean 500ms?",
    ),
    (
        "duration on an error rate",
        "max: 1%",
        "max: 2s",
        "rollouts[0].analysis.checks[0].max",
        "error-rate is a ratio: write a percentage like 1%, not a duration",
    ),
    (
        "percentage on a latency",
        "max: 500ms",
        "max: 5%",
        "rollouts[0].analysis.checks[1].max",
        "latency is a duration",
    ),
    (
        "infinite threshold",
        "max: 5\n",
        "max: .inf\n",
        "rollouts[0].analysis.checks[2].max",
        "finite number",
    ),
    (
        "empty PromQL",
        'query: sum(rate(x{a="b"}[5m]))',
        "query: ' '",
        "rollouts[0].analysis.checks[2].query",
        "the query is empty",
    ),
    (
        "unbalanced PromQL",
        'query: sum(rate(x{a="b"}[5m]))',
        'query: sum(rate(x{a="b"}[5m])',
        "rollouts[0].analysis.checks[2].query",
        "unclosed '(' at character 4",
    ),
    (
        "decreasing steps",
        "- {canary: 50%, hold: 2m}",
        "- {canary: 50%, hold: 2m}\n      - {canary: 20%, hold: 2m}",
        "rollouts[0].steps",
        "steps[2] (20%) is smaller than steps[1] (50%)",
    ),
    (
        "zero progress deadline",
        "progressDeadline: 5m",
        "progressDeadline: 0s",
        "rollouts[0].progressDeadline",
        "expected a deadline of at least 1s, got 0s",
    ),
    (
        "warm-up longer than every hold",
        "warmup: 30s",
        "warmup: 5m",
        "rollouts[0]",
        "analysis.warmup (5m) is longer than every step's hold (longest 2m)",
    ),
    (
        "invalid label key",
        "versionLabel: version",
        "versionLabel: -version",
        "rollouts[0].versionLabel",
        "expected a Kubernetes label key",
    ),
    (
        "label key with an invalid prefix",
        "versionLabel: version",
        "versionLabel: Example.com/version",
        "rollouts[0].versionLabel",
        "expected a Kubernetes label key",
    ),
    (
        "invalid Deployment name",
        "stable: web",
        "stable: web_v1",
        "rollouts[0].stable",
        "expected a Kubernetes object name",
    ),
    (
        "too long a namespace",
        "namespace: shop",
        "namespace: " + "a" * 64,
        "rollouts[0].namespace",
        "at most 63 characters",
    ),
    (
        "replicas beyond int32",
        "canary: 1,",
        "canary: 3000000000,",
        "rollouts[0].steps[0].canary",
        "expected at most 2147483647 pods",
    ),
    (
        "full-width digits in a duration",
        "- {canary: 1, hold: 2m}",
        "- {canary: 1, hold: \uff12m}",
        "rollouts[0].steps[0].hold",
        "expected a duration like 500ms",
    ),
    (
        "full-width digits in a step",
        "canary: 50%",
        "canary: \uff15\uff10%",
        "rollouts[0].steps[1].canary",
        "expected a pod count",
    ),
    (
        "port above 65535",
        "listen: 0.0.0.0:8080",
        "listen: localhost:99999",
        "daemon.listen",
        "expected a port from 0 to 65535, got 99999",
    ),
    (
        "canary equal to stable",
        "stable: web",
        "stable: web\n    canary: web",
        "rollouts[0].canary",
        "'canary' must name a different Deployment than 'stable'",
    ),
    (
        "unknown sink",
        "alerts: [ops]",
        "alerts: [ops, pager]",
        "rollouts[0].alerts[1]",
        "routes alerts to unknown sink 'pager'; defined sinks: ['ops']",
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "path", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_file_is_refused_with_a_located_problem(
    old: str, new: str, path: str, message: str
) -> None:
    assert VALID.count(old) == 1, old
    text = VALID.replace(old, new)
    problems = problems_of(text)
    assert len(problems) == 1, problems
    (problem,) = problems
    assert problem.path == path
    assert message in problem.message
    assert problem.line is not None
    # At the changed field, or (for a rule between fields) at the entry holding it.
    expected_line = line_of(text, new.splitlines()[-1].strip())
    if path == "rollouts[0]":
        expected_line = line_of(text, "- name: web")
    elif path == "rollouts[0].steps":
        expected_line = line_of(text, "steps:")
    assert problem.line == expected_line


def test_every_problem_of_a_file_in_one_pass_at_its_own_line() -> None:
    text = (
        VALID.replace("stable: web", "stable: web\n    canary: web")
        .replace("alerts: [ops]", "alerts: [pager]")
        .replace("name: slow", "name: errors")
        .replace("timeout", "x")
        .replace("url: http://prometheus:9090", "url: prometheus")
        .replace("max: 500ms", "max: 500")
    )
    problems = problems_of(text)
    assert [(p.line, p.path) for p in problems] == [
        (line_of(text, "url: prometheus"), "prometheus.url"),
        (line_of(text, "canary: web"), "rollouts[0].canary"),
        (line_of(text, "name: errors", 2), "rollouts[0].analysis.checks[1].name"),
        (line_of(text, "max: 500"), "rollouts[0].analysis.checks[1].max"),
        (line_of(text, "alerts: [pager]"), "rollouts[0].alerts[0]"),
    ]
    assert problems[2].message == "duplicate check name 'errors'"
    rendered = str(ConfigError(problems))
    assert rendered.count("\n") == len(problems) - 1  # one line per problem


def test_fields_are_named_as_the_user_wrote_them() -> None:
    text = VALID.replace("progressDeadline: 5m", "progress_deadline: 0s")
    (problem,) = problems_of(text)
    assert problem.path == "rollouts[0].progress_deadline"


def test_one_stable_deployment_in_two_rollouts() -> None:
    second = (
        "  - name: web-again\n"
        "    namespace: shop\n"
        "    stable: web\n"
        "    canary: web-other\n"
        "    analysis: {checks: [{name: errors, template: error-rate, max: 1%}]}\n"
    )
    text = VALID + second
    (problem,) = problems_of(text)
    assert (problem.path, problem.line) == ("rollouts[1].stable", line_of(text, "stable: web", 2))
    assert problem.message == (
        "Deployment shop/web is the stable of rollout 'web-again' and already the stable of "
        "rollout 'web': one Deployment belongs to one rollout"
    )
    # A rollout whose stable is another's canary drives the same Deployment too.
    text = VALID + second.replace("stable: web", "stable: web-canary")
    (problem,) = problems_of(text)
    assert "already the canary of rollout 'web'" in problem.message


def test_credentials_in_urls_are_never_printed() -> None:
    text = VALID.replace("url: http://prometheus:9090", "url: 'htp://admin:hunter2@prom:9090'")
    text = text.replace("url: {env: OPS_URL}", "url: 'ftp://bot:s3cret@hooks.example/x'")
    problems = problems_of(text)
    assert [p.path for p in problems] == ["prometheus.url", "alerts.sinks[0].url"]
    shown = str(ConfigError(problems))
    assert "hunter2" not in shown
    assert "s3cret" not in shown
    assert "htp://***@prom:9090" in shown


def _bomb(levels: int = 9) -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    names = "abcdefghijklmnopqrstuvwxyz"
    for i in range(1, levels):
        refs = ",".join([f"*{names[i - 1]}"] * 9)
        lines.append(f"{names[i]}: &{names[i]} [{refs}]")
    lines.append("prometheus: {url: 'http://p:9090'}")
    lines.append(f"rollouts: *{names[levels - 1]}")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_fails_fast_and_small() -> None:
    text = _bomb()
    assert len(text) < 600  # 9^9 = 387 million strings once expanded
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.process_time()
    (problem,) = problems_of(text)
    cpu = time.process_time() - started
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert "expands to more than 100000 values through aliases" in problem.message
    # Not timing assertions on speed: a bound that an expansion (minutes, gigabytes)
    # could never meet, however loaded the machine.
    assert cpu < 10
    assert grown_kib < 100_000


def test_a_self_referencing_alias() -> None:
    text = "prometheus: {url: 'http://p:9090'}\nrollouts: &r [*r]\n"
    (problem,) = problems_of(text)
    assert (problem.line, problem.message) == (2, "an alias refers to itself")


@pytest.mark.parametrize("depth", [900, MAX_DEPTH + 1])
def test_deep_nesting_is_refused_at_its_line(depth: int) -> None:
    text = "prometheus: {url: 'http://p:9090'}\nrollouts:\n  - " + "[" * depth + "]" * depth + "\n"
    (problem,) = problems_of(text)
    assert problem.line == 3
    assert problem.message == f"nested more than {MAX_DEPTH} levels deep; a config is about 8"


def test_nesting_a_real_config_uses_is_fine() -> None:
    deep = "{a: " * 20 + "1" + "}" * 20
    text = VALID.replace("url: {env: OPS_URL}", f"url: {{env: OPS_URL}}\n      labels: {deep}")
    # Refused for what it is (an unknown field of a webhook), not for its depth.
    assert [p.path for p in problems_of(text)] == ["alerts.sinks[0].labels"]


def test_a_dumped_config_validates_again_with_thresholds_in_their_units() -> None:
    text = VALID.replace("max: 1%", "max: 100%").replace("max: 500ms", "max: 2.5ms")
    config = parse_config(text)
    dumped = config.model_dump(mode="json", by_alias=True)
    checks = dumped["rollouts"][0]["analysis"]["checks"]
    assert [c["max"] for c in checks] == ["100%", "2.5ms", 5.0]
    assert type(config).model_validate(dumped) == config


def test_redact_hides_credentials_of_every_url_in_a_message() -> None:
    from autocanary.config.redact import redact

    text = "cannot reach http://u:p@h:9/x nor https://token@x.y/ (see http://h/a@b)"
    assert redact(text) == "cannot reach http://***@h:9/x nor https://***@x.y/ (see http://h/a@b)"


def _schema_accepts(schema: dict[str, Any], value: object, defs: dict[str, Any]) -> bool:
    """A small JSON Schema check: the keywords the config's schema uses."""
    if "$ref" in schema:
        return _schema_accepts(defs[schema["$ref"].rsplit("/", 1)[1]], value, defs)
    if "anyOf" in schema:
        return any(_schema_accepts(option, value, defs) for option in schema["anyOf"])
    kind = schema.get("type")
    checks = {
        "string": isinstance(value, str),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "null": value is None,
        "array": isinstance(value, list),
        "object": isinstance(value, dict),
    }
    if kind is not None and not checks[kind]:
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if isinstance(value, str) and "pattern" in schema:
        return re.search(schema["pattern"], value) is not None
    return True


def _properties() -> list[tuple[str, str, dict[str, Any]]]:
    schema = Config.model_json_schema(by_alias=True)
    models = {"Config": schema, **schema["$defs"]}
    return [
        (model, name, prop)
        for model, body in models.items()
        for name, prop in body.get("properties", {}).items()
    ]


def test_every_schema_property_is_described() -> None:
    undescribed = [
        f"{model}.{name}" for model, name, prop in _properties() if not prop.get("description")
    ]
    assert not undescribed


def test_every_schema_default_is_valid_for_its_own_type() -> None:
    defs = Config.model_json_schema(by_alias=True)["$defs"]
    invalid = [
        f"{model}.{name} = {prop['default']!r}"
        for model, name, prop in _properties()
        if "default" in prop and not _schema_accepts(prop, prop["default"], defs)
    ]
    assert not invalid
    # The checker is not vacuous: a fraction default written as a float would fail.
    assert not _schema_accepts({"type": "string", "pattern": "%$"}, 0.2, defs)
