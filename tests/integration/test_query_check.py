"""``validate --check-queries`` against a real Prometheus scraping an app's own metrics.

Two exporters stand in for a v1 and a v2 pod of an app instrumented the way
real apps are (``http_requests_total{handler, method, status}`` with status
classes, ``http_request_duration_seconds``), scraped with the pod's namespace
and version as target labels (what a PodMonitor's ``podTargetLabels`` does).
The check discovers both versions and runs every query the daemon would.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from autocanary_testbed.monitoring import PrometheusServer, ScrapeTarget
from autocanary_testbed.procs import free_port
from autocanary_testbed.waiting import wait_until

pytestmark = pytest.mark.integration

PrometheusFactory = Callable[..., PrometheusServer]


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autocanary", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def app_pods() -> Iterator[list[str]]:
    """Two /metrics endpoints, one per version, with some traffic counted."""
    addresses, servers = [], []
    for errors in (0, 3):
        registry = CollectorRegistry()
        requests = Counter(
            "http_requests", "requests", ["handler", "method", "status"], registry=registry
        )
        duration = Histogram(
            "http_request_duration_seconds", "latency", ["handler", "method"], registry=registry
        )
        requests.labels("/", "GET", "2xx").inc(100)
        requests.labels("/items", "GET", "2xx").inc(10)
        if errors:
            requests.labels("/", "GET", "5xx").inc(errors)
        duration.labels("/", "GET").observe(0.02)
        port = free_port()
        server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
        servers.append((server, thread))
        addresses.append(f"127.0.0.1:{port}")
    try:
        yield addresses
    finally:
        for server, thread in servers:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)


def config(url: str, analysis: str, rollout: str = "") -> str:
    return f"""\
prometheus:
  url: {url}
rollouts:
  - name: shop
    namespace: shop
    stable: shop
{rollout}    analysis:
      source: app
{analysis}"""


APP = """\
      app:
        requests: http_requests_total
        statusLabel: status
        duration: http_request_duration_seconds
"""


def test_check_queries_finds_the_versions_and_locates_what_returns_nothing_or_too_much(
    tmp_path: Path, prometheus_factory: Any, app_pods: list[str]
) -> None:
    prometheus: PrometheusServer = prometheus_factory(
        [
            ScrapeTarget("shop", address, {"namespace": "shop", "version": version})
            for address, version in zip(app_pods, ("v1", "v2"), strict=True)
        ]
    )
    prometheus.wait_for_target_up("shop", timeout=60)

    def run(name: str, text: str) -> tuple[Path, subprocess.CompletedProcess[str]]:
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        return path, cli("validate", str(path), "--check-queries")

    good_analysis = (
        APP
        + """\
      sequential: {}
      checks:
        - {name: error-rate, template: error-rate, max: 5%}
        - {name: latency-p95, template: latency, quantile: 0.95, max: 500ms}
        - name: errors-vs-stable
          template: error-rate
          relative: {tolerance: 50%, margin: 1%}
"""
    )
    good_path, good = run("good", config(prometheus.url, good_analysis))
    wait_until(
        lambda: run("good", config(prometheus.url, good_analysis))[1].returncode == 0,
        timeout=60,
        what="Prometheus holding both versions' series",
    )
    good = cli("validate", str(good_path), "--check-queries")
    assert good.returncode == 0, good.stderr
    assert "and its queries: valid" in good.stdout

    # A wrong metric name in a query: nothing for either version, at the check's line.
    typo = APP + (
        "      checks:\n"
        "        - name: slow\n"
        "          query: 'sum(rate(http_request_total{version=\"{{ version }}\"}[{{window}}]))'\n"
        "          max: 1\n"
    )
    path, result = run("typo", config(prometheus.url, typo))
    assert result.returncode == 1
    assert (
        f"{path}:14: rollouts[0].analysis.checks[0]: check slow returned no series for "
        "version 'v1', 'v2': sum(rate(http_request_total{version=\"v1\"}[30s]))"
    ) in result.stderr

    # A wrong metric name for the app's counter: said once, at app.requests.
    wrong_counter = APP.replace("requests: http_requests_total", "requests: http_request_total")
    wrong_counter += "      checks: [{name: e, template: error-rate, max: 5%}]\n"
    path, result = run("counter", config(prometheus.url, wrong_counter))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert (
        f"{path}:10: rollouts[0].analysis.app.requests: no series of "
        'http_request_total{namespace="shop"} in Prometheus'
    ) in result.stderr

    # A version label the series do not carry: at versionLabel, with the labels there.
    wrong_label = APP + "        versionLabel: track\n"
    wrong_label += "      checks: [{name: e, template: error-rate, max: 5%}]\n"
    path, result = run("label", config(prometheus.url, wrong_label))
    assert result.returncode == 1
    assert (
        f"{path}:13: rollouts[0].analysis.app.versionLabel: series of "
        "http_requests_total{namespace=\"shop\"} have no label 'track'"
    ) in result.stderr
    assert "handler, instance, job, method, namespace, status, version" in result.stderr

    # ... and the rollout's own versionLabel, when app.versionLabel is not set.
    path, result = run(
        "rollout-label",
        config(
            prometheus.url,
            APP + "      checks: [{name: e, template: error-rate, max: 5%}]\n",
            rollout="    versionLabel: release\n",
        ),
    )
    assert result.returncode == 1
    assert f"{path}:7: rollouts[0].versionLabel: series of" in result.stderr

    # A selector matching several series where one number is expected.
    several = APP + (
        "      checks:\n"
        "        - name: per-handler\n"
        "          query: 'rate(http_requests_total{version=\"{{ version }}\"}[{{ window }}])'\n"
        "          max: 100\n"
    )
    path, result = run("several", config(prometheus.url, several))
    assert result.returncode == 1
    assert f"{path}:14: rollouts[0].analysis.checks[0]: check per-handler, version 'v1'" in (
        result.stderr
    )
    assert "series (e.g." in result.stderr
    assert "aggregate it to one value, e.g. with sum(...)" in result.stderr


@pytest.fixture
def traefik_metrics() -> Iterator[str]:
    """A /metrics endpoint with Traefik v3.6's per-backend series, the stable's alone.

    Between releases only the stable's Service carries traffic; the series are
    named as Traefik's Kubernetes Gateway provider names a backend
    (``<namespace>-<Service>-http-<port>@kubernetesgateway``).
    """
    registry = CollectorRegistry()
    requests = Counter(
        "traefik_service_requests", "requests", ["service", "code", "method"], registry=registry
    )
    duration = Histogram(
        "traefik_service_request_duration_seconds",
        "latency",
        ["service", "code"],
        registry=registry,
    )
    backend = "shop-shop-stable-http-80@kubernetesgateway"
    requests.labels(backend, "200", "GET").inc(200)
    requests.labels(backend, "500", "GET").inc(2)
    duration.labels(backend, "200").observe(0.02)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


GATEWAY = """\
    strategy: gateway
    gateway:
      httpRoute: shop
      stableService: shop-stable
      canaryService: shop-canary
    steps: [{canary: 5%}, {canary: 100%}]
"""


def test_check_queries_of_a_gateway_rollout_run_on_its_backend_services(
    tmp_path: Path, prometheus_factory: Any, traefik_metrics: str
) -> None:
    prometheus: PrometheusServer = prometheus_factory(
        [ScrapeTarget("traefik", traefik_metrics, {"namespace": "gateway"})]
    )
    prometheus.wait_for_target_up("traefik", timeout=60)

    def run(
        name: str, rollout: str, analysis: str
    ) -> tuple[Path, subprocess.CompletedProcess[str]]:
        path = tmp_path / f"{name}.yaml"
        path.write_text(
            config(prometheus.url, analysis, rollout).replace("source: app", "source: gateway")
        )
        return path, cli("validate", str(path), "--check-queries")

    checks = """\
      checks:
        - {name: error-rate, template: error-rate, max: 5%}
        - {name: latency-p95, template: latency, quantile: 0.95, max: 500ms}
        - name: errors-vs-stable
          template: error-rate
          relative: {tolerance: 50%, margin: 1%}
"""
    wait_until(
        lambda: run("good", GATEWAY, checks)[1].returncode == 0,
        timeout=60,
        what="Prometheus holding the stable backend's series",
    )
    path, good = run("good", GATEWAY, checks)
    assert good.returncode == 0, good.stderr
    assert "and its queries: valid" in good.stdout

    # A check's query on the gateway's counter by a wrong name: at the check's line,
    # naming the backend Service whose series it read.
    typo = (
        "      checks:\n"
        "        - name: slow\n"
        '          query: \'sum(rate(traefik_service_request_total{service=~".*{{ service }}.*"}'
        "[{{ window }}]))'\n"
        "          max: 1\n"
    )
    path, result = run("typo", GATEWAY, typo)
    assert result.returncode == 1
    assert (
        f"{path}:16: rollouts[0].analysis.checks[0]: check slow returned no series for "
        "backend Service 'shop-stable': sum(rate(traefik_service_request_total"
    ) in result.stderr, result.stderr

    # Services the gateway's series do not name: once, at analysis.source.
    elsewhere = GATEWAY.replace("shop-stable", "cart-stable").replace("shop-canary", "cart-canary")
    path, result = run("services", elsewhere, checks)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert (
        f"{path}:14: rollouts[0].analysis.source: no series of "
        "traefik_service_requests_total{service=~\".+\"} for backend Service 'cart-stable' or "
        "'cart-canary' in Prometheus"
    ) in result.stderr, result.stderr
