"""probe as a real process against testpage processes behind a ServiceProxy, seen by Prometheus."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from autocanary_testbed.apps import ProbeProcess, start_probe, start_testpage
from autocanary_testbed.monitoring import PrometheusServer, ScrapeTarget
from autocanary_testbed.procs import ProcessGroup, free_port
from autocanary_testbed.serviceproxy import ServiceProxy
from autocanary_testbed.waiting import wait_until

pytestmark = pytest.mark.integration

PrometheusFactory = Callable[..., PrometheusServer]
#: For tests that read the probe's own /metrics after its load: it serves them that
#: much longer (the group stops it at the end of the test).
READ_AFTER = ("--linger", "10m")


def query(prometheus: PrometheusServer, expr: str, at: float | None = None) -> dict[str, float]:
    """Instant query; the result keyed by the ``version`` label ('' when absent)."""
    params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
    with httpx.Client(trust_env=False, timeout=10.0) as http:
        answer = http.get(f"{prometheus.url}/api/v1/query", params=params)
    answer.raise_for_status()
    return {
        item["metric"].get("version", ""): float(item["value"][1])
        for item in answer.json()["data"]["result"]
    }


def wait_load_finished(probe: ProbeProcess) -> None:
    wait_until(
        lambda: "probe load finished" in probe.process.log_path.read_text(),
        timeout=60,
        what="probe finished its load",
    )


def probe_counts(probe: ProbeProcess) -> dict[tuple[str, str, str], float]:
    """(version, code, reason) -> requests, from the probe's own /metrics."""
    return {
        (labels["version"], labels["code"], labels["reason"]): value
        for labels, value in probe.samples("probe_requests_total")
    }


def test_split_by_version_and_error_ratio_as_prometheus_sees_them(
    group: ProcessGroup, proxy: ServiceProxy, prometheus_factory: PrometheusFactory
) -> None:
    v1 = start_testpage(group, "v1")
    # A seed makes the 20% draw repeat exactly: the assertion below cannot flake.
    v2 = start_testpage(group, "v2", env={"FAULT_ERROR_RATE": "0.2", "FAULT_SEED": "4"})
    proxy.set_backends([v1.address, v2.address])
    probe = start_probe(
        group,
        ["--target", f"svc={proxy.url}/", "--rate", "100/s", "--duration", "10s", *READ_AFTER],
    )
    prometheus = prometheus_factory([ScrapeTarget("probe", probe.metrics_address)])
    prometheus.wait_for_target_up("probe")
    wait_load_finished(probe)
    final = sum(probe_counts(probe).values())
    total_expr = 'sum(probe_requests_total{job="probe",target="svc"})'
    wait_until(
        lambda: query(prometheus, total_expr).get("") == final,
        timeout=30,
        what="Prometheus holding the final counts",
    )

    total = query(prometheus, total_expr)[""]
    by_version = query(prometheus, 'sum by (version) (probe_requests_total{target="svc"})')
    # A version that never failed has no error series; "or ... * 0" makes its ratio 0.
    all_requests = 'sum by (version) (probe_requests_total{target="svc"})'
    failed = 'sum by (version) (probe_requests_total{target="svc",code=~"5..|error"})'
    error_ratio = query(prometheus, f"({failed} or {all_requests} * 0) / {all_requests}")
    assert total == 1000  # 100/s for 10s, sent on schedule
    assert set(by_version) == {"v1", "v2"}
    assert abs(by_version["v1"] / total - 0.5) <= 0.05
    assert error_ratio["v1"] == 0
    assert abs(error_ratio["v2"] - 0.20) <= 0.04


def p99_by_version(prometheus: PrometheusServer, window_s: int, at: float) -> dict[str, float]:
    expr = (
        "histogram_quantile(0.99, sum by (le, version) "
        f'(increase(probe_request_duration_seconds_bucket{{target="svc"}}[{window_s}s])))'
    )
    return query(prometheus, expr, at=at)


def test_latency_fault_moves_only_that_versions_p99(
    group: ProcessGroup, proxy: ServiceProxy, prometheus_factory: PrometheusFactory
) -> None:
    v1, v2 = start_testpage(group, "v1"), start_testpage(group, "v2")
    proxy.set_backends([v1.address, v2.address])
    probe = start_probe(group, ["--target", f"svc={proxy.url}/", "--rate", "100/s"])
    prometheus = prometheus_factory([ScrapeTarget("probe", probe.metrics_address)])
    prometheus.wait_for_target_up("probe")

    def scraped_past(moment: float) -> None:
        expr = 'timestamp(probe_in_flight{target="svc"})'
        wait_until(
            lambda: query(prometheus, expr).get("", 0.0) > moment + 1,
            timeout=30,
            what="Prometheus scraping past the phase",
        )

    # Phases of 9s, each judged over its last 8s: ~400 answers per version, so one
    # stall of this shared machine does not make a p99 on its own. The first
    # seconds (Prometheus and the probe warming up) are left out.
    time.sleep(4 + 9)  # warm-up, then phase 1: both versions healthy
    healthy_end = time.time()
    # A release of v2 that adds 200ms: a new instance replaces the old one.
    slow = start_testpage(group, "v2", env={"FAULT_LATENCY": "200ms"})
    proxy.set_backends([v1.address, slow.address])
    v2.process.stop()
    time.sleep(9)  # phase 2: v2 slow
    slow_end = time.time()
    scraped_past(slow_end)

    before = p99_by_version(prometheus, 8, at=healthy_end)
    after = p99_by_version(prometheus, 8, at=slow_end)
    values = f"p99 before {before}, after {after}"
    # v2's move is measured against v1 in the same window, as a canary is judged
    # against its stable: a stall of this shared machine slows both alike, while
    # two windows apart it could hide or fake a move.
    assert abs(before["v2"] - before["v1"]) < 0.100, f"alike before the release: {values}"
    # histogram_quantile interpolates inside buckets, so the 200ms can read a little short
    # (CI saw exactly 0.2 minus a rounding error): three quarters of it is the move.
    assert after["v2"] - after["v1"] >= 0.150, values
    assert after["v1"] < 0.200, f"v1 picked up v2's latency: {values}"


def test_transport_errors_count_with_their_reason(group: ProcessGroup) -> None:
    slow = start_testpage(group, "v2", env={"FAULT_LATENCY": "2s"})
    nothing = f"http://127.0.0.1:{free_port()}/"
    probe = start_probe(
        group,
        [
            "--target",
            f"slow={slow.url}/",
            "--target",
            f"gone={nothing}",
            "--rate",
            "16/s",
            "--timeout",
            "250ms",
            "--duration",
            "2s",
            *READ_AFTER,
        ],
    )
    wait_load_finished(probe)
    counts = {
        (labels["target"], labels["version"], labels["code"], labels["reason"]): value
        for labels, value in probe.samples("probe_requests_total")
    }
    assert counts == {
        ("slow", "unattributed", "error", "timeout"): 32,
        ("gone", "unattributed", "error", "connect"): 32,
    }
    durations = {
        labels["target"]: value
        for labels, value in probe.samples("probe_request_duration_seconds_bucket")
        if labels["le"] == "0.25"
    }
    assert durations == {"slow": 0, "gone": 32}  # timeouts last their 250ms and more


def test_after_its_duration_the_probe_lingers_for_a_last_scrape_then_exits(
    group: ProcessGroup, prometheus_factory: PrometheusFactory
) -> None:
    # As a Kubernetes Job: the load ends, Prometheus (scraping every second) still gets
    # the final counts during --linger, and the process then ends by itself with 0.
    page = start_testpage(group, "v1")
    port = free_port()
    prometheus = prometheus_factory([ScrapeTarget("probe", f"127.0.0.1:{port}")])
    probe = group.start(
        f"probe-{port}",
        [
            sys.executable, "-m", "autocanary.apps.probe",
            "--metrics-host", "127.0.0.1", "--metrics-port", str(port),
            "--target", f"job={page.url}/", "--rate", "50/s",
            "--duration", "3s", "--linger", "5s",
        ],
    )  # fmt: skip
    wait_until(lambda: not probe.is_running(), timeout=60, what="the probe exiting by itself")
    assert probe.returncode == 0, probe.log_tail()
    log = probe.log_path.read_text()
    order = [log.index(e) for e in ("probe load finished", "final scrape", "probe exits")]
    assert order == sorted(order), log
    # The target is gone now (its series stale): what the last scrapes read.
    total_expr = 'sum(max_over_time(probe_requests_total{job="probe",target="job"}[2m]))'
    assert query(prometheus, total_expr) == {"": 150.0}  # 50/s for 3s: every request

    # --linger 0s: no last scrape wanted, it exits as soon as the load is done.
    quick = group.start(
        "probe-quick",
        [
            sys.executable, "-m", "autocanary.apps.probe",
            "--metrics-host", "127.0.0.1", "--metrics-port", str(free_port()),
            "--target", f"job={page.url}/", "--rate", "50/s",
            "--duration", "1s", "--linger", "0s",
        ],
    )  # fmt: skip
    wait_until(lambda: not quick.is_running(), timeout=60, what="the probe exiting at once")
    assert quick.returncode == 0, quick.log_tail()
    assert "final scrape" not in quick.log_path.read_text()


# FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSING: the states of a socket that closed first.
_CLOSED_FIRST = {"04", "05", "06", "0B"}


def client_closed_first(remote_port: int) -> int:
    """Sockets to ``remote_port`` on this host that closed before the server did."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] in _CLOSED_FIRST and int(fields[2].split(":")[1], 16) == remote_port:
            count += 1
    return count


def test_the_server_closes_first_so_the_probe_keeps_no_time_wait(group: ProcessGroup) -> None:
    page = start_testpage(group, "v1")
    before = client_closed_first(page.port)  # the readiness check's own connections
    probe = start_probe(
        group, ["--target", f"{page.url}/", "--rate", "200/s", "--duration", "2s", *READ_AFTER]
    )
    wait_load_finished(probe)
    assert sum(value for _, value in probe.samples("probe_requests_total")) == 400
    assert client_closed_first(page.port) <= before


def test_config_file_runs_each_target_at_its_own_rate(
    group: ProcessGroup, tmp_workdir: Path
) -> None:
    a, b = start_testpage(group, "v1"), start_testpage(group, "v2")
    config = tmp_workdir / "probe.yaml"
    config.write_text(
        f"targets:\n"
        f"  - name: a\n    url: {a.url}/\n    rate: 960/m\n"
        f"  - name: b\n    url: {b.url}/\n"
    )
    probe = start_probe(
        group, ["--config", str(config), "--rate", "32/s", "--duration", "2s", *READ_AFTER]
    )
    wait_load_finished(probe)
    counts = {
        (labels["target"], labels["version"], labels["code"]): value
        for labels, value in probe.samples("probe_requests_total")
    }
    assert counts == {("a", "v1", "200"): 32, ("b", "v2", "200"): 64}
    lags = {
        labels["target"]: value
        for labels, value in probe.samples("probe_schedule_lag_seconds_count")
    }
    assert lags == {"a": 32, "b": 64}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--target", "http://127.0.0.1:1/", "--rate", "fast"], "positive rate such as 50"),
        (["--target", "127.0.0.1:8080"], "http:// or https:// URL"),
        (["--rate", "5"], "no targets"),
        (["--target", "a=http://127.0.0.1:1/", "--target", "a=http://127.0.0.1:2/"], "repeated: a"),
        (["--target", "http://127.0.0.1:1/", "--timeout", "0s"], "positive duration"),
        (["--target", "http://127.0.0.1:1/", "--linger", "soon"], "argument --linger"),
    ],
)
def test_invalid_arguments_are_refused(args: list[str], expected: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "autocanary.apps.probe", "--metrics-host", "127.0.0.1", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert expected in result.stderr


def test_invalid_config_is_refused_with_file_and_line(tmp_workdir: Path) -> None:
    config = tmp_workdir / "probe.yaml"
    config.write_text("targets:\n  - url: http://127.0.0.1:1/\n    rate: lots\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "autocanary.apps.probe",
            "--metrics-host",
            "127.0.0.1",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert f"{config}:3: targets[0].rate: expected a positive rate" in result.stderr
