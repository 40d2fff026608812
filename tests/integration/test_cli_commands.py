"""The CLI against the real services: `validate --check-queries` on a real Prometheus, and
`release` creating or updating the canary on the real API server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from autocanary.adapters.kubernetes import KubeClient
from autocanary_testbed.controlplane import ControlPlane
from autocanary_testbed.monitoring import PrometheusServer, ScrapeTarget
from autocanary_testbed.procs import free_port
from autocanary_testbed.stack import app_deployment
from autocanary_testbed.waiting import wait_until

pytestmark = pytest.mark.integration


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autocanary", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def config_text(prometheus_url: str, namespace: str, query: str) -> str:
    return f"""\
prometheus:
  url: {prometheus_url}
rollouts:
  - name: web
    namespace: {namespace}
    stable: web
    analysis:
      checks:
        - name: errors
          template: error-rate
          max: 1%
        - name: custom
          query: '{query}'
          max: 5
"""


@pytest.fixture
def probe_exporter() -> Iterator[str]:
    """A /metrics endpoint with the probe's series for rollout 'web', version v1."""
    registry = CollectorRegistry()
    requests = Counter(
        "probe_requests", "probe requests", ["target", "version", "code"], registry=registry
    )
    requests.labels("web", "v1", "200").inc(5)
    duration = Histogram(
        "probe_request_duration_seconds", "latency", ["target", "version"], registry=registry
    )
    duration.labels("web", "v1").observe(0.01)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_validate_checks_the_queries_on_a_real_prometheus(
    tmp_path: Path, prometheus_factory: Any, probe_exporter: str
) -> None:
    prometheus: PrometheusServer = prometheus_factory([ScrapeTarget("web", probe_exporter)])
    prometheus.wait_for_target_up("web", timeout=60)
    good = tmp_path / "good.yaml"
    good.write_text(config_text(prometheus.url, "shop", 'sum(up{job="{{ rollout }}"})'))
    bad = tmp_path / "bad.yaml"
    # Well-formed for the config's own check; only Prometheus knows its functions.
    bad.write_text(config_text(prometheus.url, "shop", "sum(nosuchfunction(up))"))

    wait_until(
        lambda: cli("validate", str(good), "--check-queries").returncode == 0,
        timeout=60,
        what="the probe's series in Prometheus",
    )
    ok = cli("validate", str(good), "--check-queries")
    assert ok.returncode == 0, ok.stderr
    assert f"{good} and its queries: valid" in ok.stdout

    failed = cli("validate", str(bad), "--check-queries")
    assert failed.returncode == 1
    # Located at the check that holds the query, with Prometheus's own complaint.
    assert f"{bad}:12: rollouts[0].analysis.checks[1]:" in failed.stderr
    assert "Prometheus rejected the query" in failed.stderr
    assert "bad_data: invalid parameter" in failed.stderr
    assert 'unknown function with name "nosuchfunction"' in failed.stderr

    unreachable = cli(
        "validate", str(good), "--check-queries", "--prometheus", "http://127.0.0.1:9"
    )
    assert unreachable.returncode == 1
    assert "prometheus.url:" in unreachable.stderr
    assert "cannot reach Prometheus at http://127.0.0.1:9" in unreachable.stderr


def test_validate_says_when_a_configured_window_is_too_short_for_the_scrape(
    tmp_path: Path, prometheus_factory: Any, probe_exporter: str
) -> None:
    prometheus: PrometheusServer = prometheus_factory(
        [ScrapeTarget("probe", probe_exporter)], scrape_interval="2s"
    )
    prometheus.wait_for_target_up("probe", timeout=60)
    config = tmp_path / "short.yaml"
    config.write_text(
        config_text(prometheus.url, "shop", "vector(1)").replace(
            "    analysis:\n", "    analysis:\n      window: 5s\n"
        )
    )
    wait_until(
        lambda: "holds fewer than 4" in cli("validate", str(config), "--check-queries").stderr,
        timeout=60,
        what="the probe's series scraped",
    )
    short = cli("validate", str(config), "--check-queries")
    assert short.returncode == 1
    assert (
        f"{config}:8: rollouts[0].analysis.window: analysis.window 5s holds fewer than 4 "
        "scrapes of the rollout's series (Prometheus scrapes them every 2s)"
    ) in short.stderr
    assert "use at least 8s" in short.stderr
    config.write_text(config.read_text().replace("window: 5s", "window: 8s"))
    enough = cli("validate", str(config), "--check-queries")
    assert enough.returncode == 0, enough.stderr


def test_release_creates_a_missing_canary_then_updates_it_keeping_its_role(
    tmp_path: Path, control_plane: ControlPlane, namespace: str
) -> None:
    api = control_plane.api_client()
    body: Any = app_deployment("web", "web", "stable", "v1", replicas=2)
    client.AppsV1Api(api).create_namespaced_deployment(namespace, body)
    config = tmp_path / "autocanary.yaml"
    config.write_text(config_text("http://127.0.0.1:9", namespace, "vector(1)"))
    common = ("-c", str(config), "--kubeconfig", str(control_plane.kubeconfig_path))
    kube = KubeClient(api)

    created = cli("release", "web", "--image", "autocanary/testpage:v2", *common)
    assert created.returncode == 0, created.stderr
    assert f"created {namespace}/web-canary" in created.stdout
    canary = kube.read_deployment(namespace, "web-canary")
    assert canary.replicas == 0, "the daemon, not the CLI, scales the canary"
    assert canary.selector == {"app": "web", "track": "canary"}
    labels = canary.template["metadata"]["labels"]
    assert (labels["track"], labels["version"]) == ("canary", "v2")
    assert canary.template["spec"]["containers"][0]["image"] == "autocanary/testpage:v2"

    updated = cli(
        "release",
        "web",
        "--image",
        "autocanary/testpage:v3",
        "--env",
        "FAULT_ERROR_RATE=0.1",
        *common,
    )
    assert updated.returncode == 0, updated.stderr
    canary = kube.read_deployment(namespace, "web-canary")
    labels = canary.template["metadata"]["labels"]
    assert (labels["track"], labels["version"]) == ("canary", "v3")
    container = canary.template["spec"]["containers"][0]
    assert container["image"] == "autocanary/testpage:v3"
    assert {"name": "FAULT_ERROR_RATE", "value": "0.1"} in container["env"]
    # The stable is untouched: shipping goes through the canary only.
    stable = kube.read_deployment(namespace, "web")
    assert stable.template["spec"]["containers"][0]["image"] == "autocanary/testpage:v1"

    unknown = cli("release", "nope", "--image", "x:1", *common)
    assert unknown.returncode == 1
    assert "error: no rollout 'nope' in the config; known: web" in unknown.stderr
