"""probe: rates, targets, the YAML config, attribution and metric bookkeeping (pure logic)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from autocanary.apps.probe import (
    ProbeMetrics,
    attribute,
    load_config,
    parse_rate,
    parse_target_arg,
    parse_timeout,
)
from autocanary.apps.probe_http import Answer, Endpoint
from autocanary.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "per_second"),
    [
        ("50", 50.0),
        ("50/s", 50.0),
        ("3000/m", 50.0),
        ("36/h", 0.01),
        ("0.5/s", 0.5),
        (" 7 / s ", 7),
    ],
)
def test_parse_rate_accepts_per_second_minute_hour(text: str, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["0", "0/s", "-5", "fast", "50/d", "", "50/s/s"])
def test_parse_rate_refuses_with_the_expected_form(text: str) -> None:
    with pytest.raises(ValueError, match=r"positive rate such as 50, 50/s, 3000/m or 10/h"):
        parse_rate(text)


def test_parse_timeout_needs_a_positive_duration_with_unit() -> None:
    assert parse_timeout("2s") == 2.0
    assert parse_timeout("500ms") == 0.5
    for text in ("0s", "2", "soon"):
        with pytest.raises(ValueError, match="positive duration such as 2s"):
            parse_timeout(text)


def test_target_arg_is_a_url_or_a_named_url() -> None:
    plain = parse_target_arg("http://127.0.0.1:8080/", 10.0, 1.0)
    assert (plain.name, plain.endpoint.port, plain.rate, plain.timeout_s) == (
        "http://127.0.0.1:8080/",
        8080,
        10.0,
        1.0,
    )
    named = parse_target_arg("shop=http://shop.prod.svc/cart?id=1", 10.0, 1.0)
    assert named.name == "shop"
    assert named.endpoint.url == "http://shop.prod.svc/cart?id=1"
    query = parse_target_arg("http://h/?a=b", 10.0, 1.0)
    assert query.name == "http://h/?a=b"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bad name=http://h/", "target name is up to 63"),
        ("shop=ftp://h/", "http:// or https:// URL"),
        ("127.0.0.1:8080", "http:// or https:// URL"),
        ("http://user:pw@h/", "credentials"),
        ("http://h:99999/", "invalid port"),
        ("http://h/ü", "must be ASCII"),
    ],
)
def test_target_arg_refuses_bad_names_and_urls(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_target_arg(text, 1.0, 1.0)


def test_endpoint_builds_a_closing_get_with_host_header() -> None:
    endpoint = Endpoint.from_url("http://127.0.0.1:8080/a/b?c=d")
    assert endpoint.request.startswith(b"GET /a/b?c=d HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n")
    assert b"\r\nConnection: close\r\n\r\n" in endpoint.request
    assert endpoint.tls is None
    secure = Endpoint.from_url("https://example.test")
    assert (secure.port, secure.tls is not None) == (443, True)
    assert secure.request.startswith(b"GET / HTTP/1.1\r\nHost: example.test\r\n")


def test_config_fills_missing_fields_from_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "probe.yaml"
    path.write_text(
        "targets:\n"
        "  - name: shop\n"
        "    url: http://127.0.0.1:8080/\n"
        "    rate: 3000/m\n"
        "    timeout: 500ms\n"
        "  - url: http://127.0.0.1:8081/\n"
    )
    shop, other = load_config(path, rate=5.0, timeout_s=2.0)
    assert (shop.name, shop.rate, shop.timeout_s) == ("shop", 50.0, 0.5)
    assert (other.name, other.rate, other.timeout_s) == ("http://127.0.0.1:8081/", 5.0, 2.0)


def test_config_reports_every_problem_with_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "probe.yaml"
    path.write_text(
        "targets:\n"
        "  - url: http://127.0.0.1:8080/\n"
        "    rate: lots\n"
        "  - name: x\n"
        "  - url: ftp://nowhere/\n"
        "    colour: red\n"
        "extra: 1\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config(path, rate=1.0, timeout_s=1.0)
    found = {(p.line, p.path) for p in e.value.problems}
    assert found == {
        (3, "targets[0].rate"),
        (4, "targets[1].url"),
        (5, "targets[2].url"),
        (6, "targets[2].colour"),
        (7, "extra"),
    }
    assert f"{path}:3: targets[0].rate: expected a positive rate" in str(e.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected a mapping with a non-empty 'targets' list"),
        ("targets: []\n", "expected a mapping with a non-empty 'targets' list"),
        ("other: 1\n", "missing; expected a mapping"),
        ("targets: [\n", "not valid YAML"),
        ("targets:\n  - url: [a, b]\n", "expected a single value"),
    ],
)
def test_config_refuses_malformed_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "probe.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, rate=1.0, timeout_s=1.0)


def test_config_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml", rate=1.0, timeout_s=1.0)


@pytest.mark.parametrize(
    ("answer", "version"),
    [
        (Answer(200, "v2", b"I am: 10.0.0.1, the version is: v1"), "v2"),
        (Answer(500, None, b"I am: 10.0.0.1, the version is: v1.4-rc2\n"), "v1.4-rc2"),
        (Answer(200, "bad value!", b"I am: 10.0.0.1, the version is: v3"), "v3"),
        (Answer(200, None, b"<html>hello</html>"), "unknown"),
        (Answer(204, None, b""), "unknown"),
    ],
)
def test_attribution_prefers_the_header_then_the_body(answer: Answer, version: str) -> None:
    assert attribute(answer) == version


def test_metrics_label_errors_by_reason_and_cap_versions_per_target() -> None:
    registry = CollectorRegistry()
    metrics = ProbeMetrics(registry)
    metrics.sent("shop", 0.0)
    metrics.finished("shop", "unknown", "error", "timeout", 2.0)
    for n in range(20):
        metrics.sent("shop", 0.0)
        metrics.finished("shop", f"build-{n}", "200", "", 0.01)
    value = registry.get_sample_value
    labels = {"target": "shop", "version": "unknown", "code": "error", "reason": "timeout"}
    assert value("probe_requests_total", labels) == 1.0
    assert value("probe_in_flight", {"target": "shop"}) == 0.0
    # "unknown" and build-0..14 fill the 16 slots; builds 15..19 count as "other".
    other = {"target": "shop", "version": "other", "code": "200", "reason": ""}
    assert value("probe_requests_total", other) == 5.0
    assert value("probe_request_duration_seconds_count", {"target": "shop", "version": "build-14"})
    assert value("probe_schedule_lag_seconds_count", {"target": "shop"}) == 21.0
    assert metrics.tally[("shop", "unknown", "error:timeout")] == 1
