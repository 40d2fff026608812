"""testpage: environment parsing, fault draws, request-head parsing (pure logic)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from autocanary.apps.testpage import (
    EchoApp,
    Faults,
    Settings,
    parse_fraction,
    parse_latency,
    settings_from_env,
)
from autocanary.apps.testpage_http import BadRequest, parse_head
from autocanary.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0.0), ("0.2", 0.2), ("1", 1.0), ("20%", 0.2), (" 0.5 ", 0.5), ("100%", 1.0)],
)
def test_parse_fraction_accepts_fractions_and_percentages(text: str, expected: float) -> None:
    assert parse_fraction(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["1.5", "-0.1", "abc", "120%", "nan", "inf", "0.2x"])
def test_parse_fraction_refuses_with_the_expected_form(text: str) -> None:
    with pytest.raises(ValueError, match="fraction between 0 and 1") as e:
        parse_fraction(text)
    assert repr(text) in str(e.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("200ms", (0.2, 0.0)),
        ("1s", (1.0, 0.0)),
        ("200ms±50ms", (0.2, 0.05)),
        ("200ms+-50ms", (0.2, 0.05)),
        (" 1s ± 250ms ", (1.0, 0.25)),
    ],
)
def test_parse_latency_accepts_a_duration_with_optional_spread(
    text: str, expected: tuple[float, float]
) -> None:
    assert parse_latency(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["200", "fast", "200ms±", "±50ms", "-200ms", "200ms,50ms"])
def test_parse_latency_refuses_with_the_expected_form(text: str) -> None:
    with pytest.raises(
        ValueError, match=r"such as 200ms, optionally with a spread such as 200ms±50ms"
    ):
        parse_latency(text)


def test_settings_from_env_reads_every_variable() -> None:
    settings = settings_from_env(
        {
            "VERSION": "v2.1-rc1",
            "POD_IP": "10.1.2.3",
            "FAULT_ERROR_RATE": "0.25",
            "FAULT_LATENCY": "100ms±20ms",
            "FAULT_AFTER": "1m",
            "FAULT_SEED": "7",
        }
    )
    assert settings == Settings("v2.1-rc1", "10.1.2.3", Faults(0.25, 0.1, 0.02, 60.0, 7))


def test_settings_from_env_treats_empty_values_as_unset() -> None:
    empty = dict.fromkeys(
        ("VERSION", "POD_IP", "FAULT_ERROR_RATE", "FAULT_LATENCY", "FAULT_AFTER"), ""
    )
    assert settings_from_env(empty) == Settings()
    assert Settings().version == "dev"


def test_settings_from_env_reports_every_invalid_variable_by_name() -> None:
    with pytest.raises(ConfigError) as e:
        settings_from_env(
            {
                "VERSION": "v 1",
                "POD_IP": "not-an-ip",
                "FAULT_ERROR_RATE": "1.5",
                "FAULT_LATENCY": "slow",
                "FAULT_AFTER": "soon",
                "FAULT_SEED": "x",
            }
        )
    by_variable = {problem.path: problem.message for problem in e.value.problems}
    assert set(by_variable) == {
        "VERSION",
        "POD_IP",
        "FAULT_ERROR_RATE",
        "FAULT_LATENCY",
        "FAULT_AFTER",
        "FAULT_SEED",
    }
    assert "'1.5'" in by_variable["FAULT_ERROR_RATE"]
    assert "such as 30s" in by_variable["FAULT_AFTER"]
    assert "IPv4 or IPv6" in by_variable["POD_IP"]
    assert "environment: FAULT_LATENCY: expected a duration" in str(e.value)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_faults_apply_only_after_the_onset_delay() -> None:
    clock = FakeClock()
    page = EchoApp(
        Settings("v2", None, Faults(error_rate=1.0, latency_s=0.2, after_s=30.0)),
        CollectorRegistry(),
        clock=clock,
    )
    assert page.draw_faults() == (0.0, False)
    clock.now += 29.9
    assert page.draw_faults() == (0.0, False)
    clock.now += 0.1
    assert page.draw_faults() == (0.2, True)


def test_faults_stop_after_their_duration() -> None:
    clock = FakeClock()
    faults = Faults(error_rate=1.0, after_s=10.0, for_s=20.0)
    page = EchoApp(Settings("v2", None, faults), CollectorRegistry(), clock=clock)
    assert page.draw_faults() == (0.0, False)
    clock.now += 10.0
    assert page.draw_faults() == (0.0, True)
    clock.now += 19.9
    assert page.draw_faults() == (0.0, True)
    clock.now += 0.1
    assert page.draw_faults() == (0.0, False)
    assert settings_from_env({"FAULT_FOR": "20s"}).faults.for_s == 20.0


def test_unready_fault_fails_readiness_only_while_the_faults_apply() -> None:
    clock = FakeClock()
    faults = settings_from_env({"FAULT_UNREADY": "true", "FAULT_AFTER": "10s"}).faults
    assert faults == Faults(after_s=10.0, unready=True)
    page = EchoApp(Settings("v2", None, faults), CollectorRegistry(), clock=clock)
    assert page.ready()
    clock.now += 10.0
    assert not page.ready()
    assert page.draw_faults() == (0.0, False), "GET / itself stays healthy"
    assert EchoApp(Settings(), CollectorRegistry(), clock=clock).ready()


def test_unready_fault_takes_true_or_false_only() -> None:
    assert settings_from_env({"FAULT_UNREADY": "FALSE"}).faults.unready is False
    with pytest.raises(ConfigError, match=r"FAULT_UNREADY.*expected true or false, got 'yes'"):
        settings_from_env({"FAULT_UNREADY": "yes"})


def test_error_rate_draws_are_reproducible_with_a_seed_and_near_the_rate() -> None:
    faults = Faults(error_rate=0.2, seed=42)

    def failures() -> list[bool]:
        page = EchoApp(Settings("v2", None, faults), CollectorRegistry())
        return [page.draw_faults()[1] for _ in range(10_000)]

    first = failures()
    assert first == failures()
    assert 0.18 < sum(first) / len(first) < 0.22


def test_latency_spread_stays_within_bounds_and_never_negative() -> None:
    page = EchoApp(
        Settings("v2", None, Faults(latency_s=0.2, spread_s=0.05, seed=1)), CollectorRegistry()
    )
    delays = [page.draw_faults()[0] for _ in range(2000)]
    assert min(delays) >= 0.15
    assert max(delays) <= 0.25
    assert max(delays) - min(delays) > 0.09
    wide = Faults(latency_s=0.01, spread_s=0.05)
    page = EchoApp(Settings("v2", None, wide), CollectorRegistry())
    assert min(page.draw_faults()[0] for _ in range(2000)) == 0.0


def test_request_counts_start_with_both_outcomes_of_the_app_path() -> None:
    registry = CollectorRegistry()
    page = EchoApp(Settings("v1"), registry)
    labels = {"version": "v1", "method": "GET", "path": "/"}
    assert registry.get_sample_value("testpage_requests_total", {**labels, "code": "500"}) == 0.0
    page.count(200, "GET", "/")
    page.count(200, "GET", "/")
    assert registry.get_sample_value("testpage_requests_total", {**labels, "code": "200"}) == 2.0


def test_parse_head_reads_method_path_and_keep_alive() -> None:
    request = parse_head(b"GET /healthz?full=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3")
    assert (request.method, request.path, request.keep_alive, request.body_length) == (
        "GET",
        b"/healthz",
        True,
        3,
    )
    assert not parse_head(b"GET / HTTP/1.1\r\nConnection: close").keep_alive
    old = parse_head(b"GET / HTTP/1.0\r\nHost: x")
    assert (old.http10, old.keep_alive) == (True, False)
    assert parse_head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive").keep_alive


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /", 400),
        (b"GET / HTTP/2.0", 400),
        (b"GET nothing HTTP/1.1", 400),
        (b"GET / HTTP/1.1\r\nno colon here", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: many", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 99999999", 413),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked", 501),
    ],
)
def test_parse_head_refuses_what_it_cannot_serve(head: bytes, status: int) -> None:
    with pytest.raises(BadRequest) as e:
        parse_head(head)
    assert e.value.status == status
