"""Prometheus scrapes a real /metrics endpoint and answers queries; Alertmanager accepts
alerts through its v2 API and notifies a webhook."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from autocanary_testbed.monitoring import AlertmanagerServer, PrometheusServer, ScrapeTarget
from autocanary_testbed.waiting import wait_until

pytestmark = pytest.mark.integration

_T = 10.0


@pytest.fixture
def metrics_endpoint() -> Iterator[tuple[str, CollectorRegistry]]:
    """A prometheus_client /metrics server on 127.0.0.1: its address and registry."""
    registry = CollectorRegistry()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{server.server_port}", registry
    finally:
        server.shutdown()
        server.server_close()
        thread.join(_T)


def instant(prometheus: PrometheusServer, query: str) -> list[dict[str, Any]]:
    with httpx.Client(trust_env=False, timeout=_T) as http:
        response = http.get(f"{prometheus.url}/api/v1/query", params={"query": query})
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


def test_prometheus_scrapes_a_metrics_endpoint_and_answers_a_query(
    prometheus_factory: Callable[..., PrometheusServer],
    metrics_endpoint: tuple[str, CollectorRegistry],
) -> None:
    address, registry = metrics_endpoint
    Gauge("autocanary_test_answer", "A fixed value to find.", registry=registry).set(42)

    prometheus = prometheus_factory([ScrapeTarget("app", address, {"version": "v1"})])
    prometheus.wait_for_target_up("app", timeout=60)

    (series,) = instant(prometheus, 'autocanary_test_answer{job="app"}')
    assert series["metric"]["version"] == "v1"
    assert series["metric"]["instance"] == address
    assert float(series["value"][1]) == 42.0


def test_prometheus_picks_up_new_targets_on_set_targets(
    prometheus_factory: Callable[..., PrometheusServer],
    metrics_endpoint: tuple[str, CollectorRegistry],
) -> None:
    address, registry = metrics_endpoint
    requests = Counter("autocanary_test_requests", "Counted requests.", registry=registry)
    requests.inc(7)
    prometheus = prometheus_factory([])

    prometheus.set_targets([ScrapeTarget("late", address)])
    prometheus.wait_for_target_up("late", timeout=60)

    (series,) = instant(prometheus, 'autocanary_test_requests_total{job="late"}')
    assert float(series["value"][1]) == 7.0
    assert prometheus.config_path.read_text().count("job_name") == 1


def test_alert_posted_to_alertmanager_is_listed(alertmanager: AlertmanagerServer) -> None:
    alert = {
        "labels": {"alertname": "CanaryRolledBack", "rollout": "web", "namespace": "shop"},
        "annotations": {"summary": "web-canary rolled back"},
    }
    with httpx.Client(base_url=alertmanager.url, trust_env=False, timeout=_T) as http:
        posted = http.post("/api/v2/alerts", json=[alert])
        assert posted.status_code == 200
        listed = http.get("/api/v2/alerts", params={"filter": 'alertname="CanaryRolledBack"'})
    listed.raise_for_status()

    (found,) = listed.json()
    assert found["labels"] == alert["labels"]
    assert found["annotations"] == alert["annotations"]
    assert found["status"]["state"] == "active"


class _Recorder(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


def test_alertmanager_notifies_its_webhook(tmp_workdir: Path) -> None:
    received: list[dict[str, Any]] = []
    handler = type("Recorder", (_Recorder,), {"received": received})
    webhook = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=webhook.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{webhook.server_port}/hook"
        with AlertmanagerServer(tmp_workdir / "am", webhook_url=url) as alertmanager:
            with httpx.Client(trust_env=False, timeout=_T) as http:
                alert = {"labels": {"alertname": "CanaryPaused", "rollout": "web"}}
                http.post(f"{alertmanager.url}/api/v2/alerts", json=[alert]).raise_for_status()
            wait_until(lambda: bool(received), timeout=60, what="webhook notified")
    finally:
        webhook.shutdown()
        webhook.server_close()
        thread.join(_T)

    notification = received[0]
    assert notification["status"] == "firing"
    assert [a["labels"]["alertname"] for a in notification["alerts"]] == ["CanaryPaused"]
