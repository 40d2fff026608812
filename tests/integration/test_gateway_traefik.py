"""The test bed's real gateway: Traefik routing an HTTPRoute's weights and matches, and its metrics.

A gateway stack (``StackSettings(gateway=True)``) runs the app's stable and
canary pods behind Services ``testpage-stable`` and ``testpage-canary``,
Traefik as the controller of a Gateway, and HTTPRoute ``testpage`` sending
everything to the stable Service (weights 100/0). One patch of the route then
gives the canary 5% and adds a header match always routing to the canary;
what Traefik does is counted from the test page's own answers ("the version
is: ..."), and Traefik's per-Service metrics are read from the bed's
Prometheus, which discovered Traefik's pod through its PodMonitor.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client

from autocanary_testbed.controlplane import ControlPlane
from autocanary_testbed.gateway import GROUP, VERSION, backend_ref
from autocanary_testbed.stack import BACKEND_PORT, CanaryStack, StackSettings
from autocanary_testbed.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.traefik]

_T = 10  # seconds per API call
_READY_S = 90  # a bound for a hang on a loaded 2-core machine, not a timing expectation
_ANSWER = re.compile(rb"the version is: (\S+)")
_SPLIT_REQUESTS = 2000
_HEADER = {"X-Tester": "yes"}


def versions(
    http: httpx.Client, url: str, count: int, headers: dict[str, str] | None = None
) -> Counter[str]:
    """How many of ``count`` requests each version answered (any failure counts as one)."""
    seen: Counter[str] = Counter()
    for _ in range(count):
        response = http.get(url, headers=headers)
        found = _ANSWER.search(response.content)
        seen[
            found.group(1).decode()
            if found and response.is_success
            else f"HTTP {response.status_code}"
        ] += 1
    return seen


def prometheus_series(stack: CanaryStack, query: str) -> list[dict[str, Any]]:
    """An instant query's result from the bed's Prometheus."""
    with httpx.Client(trust_env=False, timeout=_T) as http:
        response = http.get(f"{stack.prometheus.url}/api/v1/query", params={"query": query})
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()["data"]["result"]
        return result


@pytest.fixture
def stack(control_plane: ControlPlane, tmp_workdir: Path) -> Iterator[CanaryStack]:
    settings = StackSettings(namespace=f"gw-{uuid.uuid4().hex[:8]}", replicas=2, gateway=True)
    stack = CanaryStack(control_plane, tmp_workdir / settings.namespace, settings)
    try:
        yield stack.start(daemon=False)
    finally:
        stack.stop()


def test_weights_and_header_match_through_traefik(stack: CanaryStack) -> None:
    assert stack.gateway is not None
    url = f"{stack.gateway.url}/"
    assert stack.route_weights() == {stack.stable_service: 100, stack.canary_service: 0}
    # One canary pod of v2, as a release's first step would have.
    stack.apps.patch_namespaced_deployment(
        stack.canary_name,
        stack.namespace,
        {"spec": {"replicas": 1, "template": {"metadata": {"labels": {"version": "v2"}}}}},
        _request_timeout=_T,
    )
    canary_proxy = stack.backend_proxies[stack.canary_service]
    wait_until(
        lambda: len(canary_proxy.backends) == 1,
        timeout=_READY_S,
        what="the canary pod in its Service",
    )

    with httpx.Client(trust_env=False, timeout=_T) as http:
        # Weight 0: the canary gets nothing, though it is Ready and in its Service.
        assert versions(http, url, 100) == {"v1": 100}

        client.CustomObjectsApi(stack.api).patch_namespaced_custom_object(
            GROUP,
            VERSION,
            stack.namespace,
            "httproutes",
            stack.route_name,
            {
                "spec": {
                    "rules": [
                        {
                            "matches": [{"headers": [{"name": "X-Tester", "value": "yes"}]}],
                            "backendRefs": [backend_ref(stack.canary_service, 1, BACKEND_PORT)],
                        },
                        {
                            "backendRefs": [
                                backend_ref(stack.stable_service, 95, BACKEND_PORT),
                                backend_ref(stack.canary_service, 5, BACKEND_PORT),
                            ]
                        },
                    ]
                }
            },
            _request_timeout=_T,
        )
        assert stack.route_weights(rule=1) == {stack.stable_service: 95, stack.canary_service: 5}
        # Both rules arrive in one configuration: once the match routes, the weights apply.
        wait_until(
            lambda: versions(http, url, 1, _HEADER) == {"v2": 1},
            timeout=_READY_S,
            what="Traefik routing the header match to the canary",
        )

        assert versions(http, url, 50, _HEADER) == {"v2": 50}
        split = versions(http, url, _SPLIT_REQUESTS)
    assert set(split) == {"v1", "v2"}, split
    share = split["v2"] / _SPLIT_REQUESTS
    assert 0.035 <= share <= 0.065, f"canary share {share:.2%} of {split}"

    # Traefik's own per-Service counter and histogram, scraped through discovery.
    job = stack.gateway.pod_monitor_job
    by_service: dict[str, float] = {}

    def counted() -> bool:
        series = prometheus_series(
            stack, f'sum by (service) (traefik_service_requests_total{{job="{job}",code="200"}})'
        )
        by_service.clear()
        by_service.update({s["metric"]["service"]: float(s["value"][1]) for s in series})
        canary = [v for k, v in by_service.items() if stack.canary_service in k]
        # A request may be counted under the backend's own service and under a wrapper naming it.
        return any(v >= 50 + split["v2"] for v in canary)

    wait_until(
        counted,
        timeout=_READY_S,
        what=f"Traefik's per-Service requests in Prometheus ({by_service})",
    )
    assert any(stack.stable_service in name for name in by_service), by_service
    buckets = prometheus_series(
        stack,
        f'count by (service) (traefik_service_request_duration_seconds_bucket{{job="{job}"}})',
    )
    assert {s["metric"]["service"] for s in buckets} >= set(by_service), buckets
