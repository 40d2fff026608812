"""The test bed behaves like a cluster: pod IPs, Services from EndpointSlices, Prometheus SD.

Pods run as processes on their pod IPs (the pod runner, as a kubelet), the
Service proxy follows the EndpointSlices the real endpoint-slice controller
writes (as kube-proxy), and Prometheus finds pods through the API server with
its own ServiceAccount (as kube-prometheus) and labels their series.
"""

from __future__ import annotations

import ipaddress
import ssl
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client

from autocanary_testbed.apps import start_probe
from autocanary_testbed.controlplane import ControlPlane
from autocanary_testbed.kubeproxy import ServiceEndpoints
from autocanary_testbed.monitoring import PodMonitor, PrometheusServer, prometheus_access
from autocanary_testbed.podrunner import PodRunner
from autocanary_testbed.procs import ProcessGroup
from autocanary_testbed.serviceproxy import ServiceProxy
from autocanary_testbed.stack import POD_TARGET_LABELS, app_deployment, app_service
from autocanary_testbed.waiting import wait_until

pytestmark = pytest.mark.integration

_T = 10  # seconds per API call
_SCRAPE_S = 5  # the e2e tier's default scrape interval


def ready_pods(kube_api: client.ApiClient, namespace: str) -> list[client.V1Pod]:
    pods = client.CoreV1Api(kube_api).list_namespaced_pod(namespace, _request_timeout=_T).items
    return [
        p
        for p in pods
        if p.metadata.deletion_timestamp is None
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    ]


def deploy(kube_api: client.ApiClient, namespace: str, replicas: int, version: str = "v1") -> None:
    body: Any = app_deployment("web", "web", "stable", version, replicas=replicas)
    client.AppsV1Api(kube_api).create_namespaced_deployment(namespace, body, _request_timeout=_T)


def wait_ready(kube_api: client.ApiClient, namespace: str, count: int) -> list[client.V1Pod]:
    wait_until(
        lambda: len(ready_pods(kube_api, namespace)) == count,
        timeout=90,
        what=f"{count} pods Ready",
    )
    return ready_pods(kube_api, namespace)


def test_each_pod_process_answers_on_its_own_pod_ip(
    control_plane: ControlPlane,
    kube_api: client.ApiClient,
    runner_namespace: str,
    pod_runner: PodRunner,
) -> None:
    deploy(kube_api, runner_namespace, replicas=2)
    pods = wait_ready(kube_api, runner_namespace, 2)
    network = control_plane.pod_network

    ips = {p.status.pod_ip for p in pods}
    assert len(ips) == 2
    for ip in ips:
        address = ipaddress.ip_address(ip)
        assert address in ipaddress.ip_network(network.pod_cidr)
        assert not address.is_loopback, "an address the API server accepts in EndpointSlices"
        # Both on the declared port 8080: only their own addresses make that possible.
        with httpx.Client(trust_env=False, timeout=5) as http:
            answer = http.get(f"http://{network.host_address(ip, 8080)}/")
        assert answer.text.startswith(f"I am: {ip}, the version is: v1"), answer.text
        assert answer.headers["x-version"] == "v1"
    assert {p.address for p in pod_runner.pods()} == {network.host_address(ip, 8080) for ip in ips}


def test_a_pod_is_ready_only_once_its_readiness_probe_passes(
    kube_api: client.ApiClient, runner_namespace: str, pod_runner: PodRunner
) -> None:
    deploy(kube_api, runner_namespace, replicas=1)
    (pod,) = wait_ready(kube_api, runner_namespace, 1)
    conditions = {c.type: c for c in pod.status.conditions}
    (running,) = pod_runner.pods()
    # KWOK made it Running with its IP; the runner's prober made it Ready afterwards.
    assert running.ready
    assert conditions["Ready"].last_transition_time >= pod.status.start_time


def test_an_image_the_runner_cannot_run_never_gets_ready(
    kube_api: client.ApiClient, runner_namespace: str, pod_runner: PodRunner
) -> None:
    body: Any = app_deployment("web", "web", "stable", "v1", replicas=1)
    body["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.example/nothing:v1"
    client.AppsV1Api(kube_api).create_namespaced_deployment(
        runner_namespace, body, _request_timeout=_T
    )
    core = client.CoreV1Api(kube_api)

    def reported() -> bool:
        pods = core.list_namespaced_pod(runner_namespace, _request_timeout=_T).items
        return any(
            c.type == "Ready" and c.reason == "ErrImagePull"
            for p in pods
            for c in p.status.conditions or []
        )

    wait_until(reported, timeout=60, what="the pod reported not Ready for its image")
    assert ready_pods(kube_api, runner_namespace) == []
    assert pod_runner.pods() == []


@pytest.fixture
def service(
    control_plane: ControlPlane, kube_api: client.ApiClient, runner_namespace: str
) -> Iterator[ServiceEndpoints]:
    """Service ``web`` and a proxy following its EndpointSlices."""
    body: Any = app_service("web")
    client.CoreV1Api(kube_api).create_namespaced_service(
        runner_namespace, body, _request_timeout=_T
    )
    with (
        ServiceProxy() as proxy,
        ServiceEndpoints(
            kube_api, control_plane.pod_network, runner_namespace, "web", proxy, port_name="http"
        ) as endpoints,
    ):
        yield endpoints


def test_a_deleted_pod_leaves_the_rotation_once_its_endpoint_is_terminating(
    kube_api: client.ApiClient,
    runner_namespace: str,
    pod_runner: PodRunner,
    service: ServiceEndpoints,
    group: ProcessGroup,
) -> None:
    deploy(kube_api, runner_namespace, replicas=2)
    wait_ready(kube_api, runner_namespace, 2)
    proxy = service.proxy
    wait_until(lambda: len(proxy.backends) == 2, timeout=30, what="both pods in the rotation")
    probe = start_probe(
        # --linger: its /metrics are read below after the load has ended.
        group,
        ["--target", f"web={proxy.url}/", "--rate", "40/s", "--duration", "12s", "--linger", "10m"],
    )
    wait_until(proxy.connection_counts, timeout=30, what="traffic through the proxy")

    leaving = next(p for p in pod_runner.pods())
    (pod_ip,) = {e.address for e in service.endpoints() if e.pod == leaving.name}
    client.CoreV1Api(kube_api).delete_namespaced_pod(
        leaving.name, runner_namespace, _request_timeout=_T
    )

    def terminating() -> bool:
        return any(e.pod == leaving.name and e.terminating for e in service.endpoints())

    wait_until(terminating, timeout=30, what="its endpoint terminating")
    # Out of the rotation while its process still drains (testpage's 5s drain delay).
    assert leaving.address not in proxy.backends
    assert any(p.name == leaving.name for p in pod_runner.pods()), "still draining"
    (entry,) = [e for e in service.endpoints() if e.pod == leaving.name]
    assert (entry.address, entry.ready, entry.terminating) == (pod_ip, False, True)
    served = proxy.connection_counts()[leaving.address]
    time.sleep(1)
    assert proxy.connection_counts()[leaving.address] == served, "no new connection to it"

    def codes() -> dict[str, float]:
        return {
            labels["code"]: value
            for labels, value in probe.samples("probe_requests_total")
            if value
        }

    wait_until(lambda: sum(codes().values()) == 40 * 12, timeout=60, what="the load sent")
    assert set(codes()) == {"200"}, f"every request answered: {codes()}"
    wait_until(
        lambda: all(e.pod != leaving.name for e in service.endpoints()),
        timeout=60,
        what="the pod removed from its EndpointSlice",
    )


def _prometheus(
    control_plane: ControlPlane,
    kube_api: client.ApiClient,
    namespace: str,
    workdir: Path,
) -> PrometheusServer:
    access = prometheus_access(
        kube_api,
        control_plane.server_url,
        control_plane.ca_cert_path,
        control_plane.pod_network,
        workdir / "prometheus.token",
    )
    monitor = PodMonitor(
        name="web",
        namespace=namespace,
        selector={"app": "web"},
        port="http",
        pod_target_labels=POD_TARGET_LABELS,
    )
    return PrometheusServer(
        workdir / "prometheus",
        scrape_interval=f"{_SCRAPE_S}s",
        pod_monitors=[monitor],
        kubernetes=access,
    )


def _instant(prometheus: PrometheusServer, expr: str) -> list[dict[str, Any]]:
    with httpx.Client(trust_env=False, timeout=10) as http:
        response = http.get(f"{prometheus.url}/api/v1/query", params={"query": expr})
        response.raise_for_status()
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


def _seconds(moment: datetime) -> float:
    return moment.timestamp()


def test_prometheus_discovers_a_new_pod_and_labels_its_series_with_the_pods_labels(
    control_plane: ControlPlane,
    kube_api: client.ApiClient,
    runner_namespace: str,
    pod_runner: PodRunner,
    tmp_workdir: Path,
) -> None:
    deploy(kube_api, runner_namespace, replicas=1, version="v7")
    with _prometheus(control_plane, kube_api, runner_namespace, tmp_workdir) as prometheus:
        (first,) = wait_ready(kube_api, runner_namespace, 1)
        prometheus.wait_for_target_up(f"{runner_namespace}/web", timeout=60)
        client.AppsV1Api(kube_api).patch_namespaced_deployment_scale(
            "web", runner_namespace, {"spec": {"replicas": 2}}, _request_timeout=_T
        )
        pods = wait_ready(kube_api, runner_namespace, 2)
        (new,) = [p for p in pods if p.metadata.name != first.metadata.name]
        ready_at = _seconds(
            next(c.last_transition_time for c in new.status.conditions if c.type == "Ready")
        )
        selector = f'up{{pod="{new.metadata.name}"}} == 1'
        wait_until(lambda: bool(_instant(prometheus, selector)), timeout=60, what="scraped")

        (series,) = _instant(prometheus, f'up{{pod="{new.metadata.name}"}}[5m]')
        first_up = min(ts for ts, value in series["values"] if value == "1")
        # Ready times have whole seconds: allow the one second they may hide.
        assert first_up - ready_at <= 2 * _SCRAPE_S + 1, (first_up, ready_at)
        labels = series["metric"]
        assert labels["namespace"] == runner_namespace
        assert labels["version"] == "v7"
        assert labels["track"] == "stable"
        assert labels["job"] == f"{runner_namespace}/web"
        assert labels["instance"] == control_plane.pod_network.host_address(new.status.pod_ip, 8080)

        # The app's own version label is kept beside the pod's (honorLabels: false).
        # Prometheus scrapes a pod from when it has an IP, Ready or not: its first
        # scrape can come before the readiness probe's first /healthz was counted.
        healthz = f'testpage_requests_total{{pod="{new.metadata.name}",path="/healthz"}}'
        wait_until(lambda: bool(_instant(prometheus, healthz)), timeout=30, what="the app's series")
        (app,) = _instant(prometheus, healthz)
        assert app["metric"]["version"] == "v7"
        assert app["metric"]["exported_version"] == "v7"


def test_nothing_is_scraped_from_a_pod_that_has_gone(
    control_plane: ControlPlane,
    kube_api: client.ApiClient,
    runner_namespace: str,
    pod_runner: PodRunner,
    tmp_workdir: Path,
) -> None:
    deploy(kube_api, runner_namespace, replicas=2)
    core = client.CoreV1Api(kube_api)
    with _prometheus(control_plane, kube_api, runner_namespace, tmp_workdir) as prometheus:
        pods = wait_ready(kube_api, runner_namespace, 2)
        wait_until(
            lambda: len(_instant(prometheus, "up == 1")) == 2, timeout=60, what="both scraped"
        )
        client.AppsV1Api(kube_api).patch_namespaced_deployment_scale(
            "web", runner_namespace, {"spec": {"replicas": 1}}, _request_timeout=_T
        )

        wait_until(
            lambda: len(_pod_names(core, runner_namespace)) == 1, timeout=90, what="one pod left"
        )
        gone = next(
            p.metadata.name
            for p in pods
            if p.metadata.name not in _pod_names(core, runner_namespace)
        )

        def target_dropped() -> bool:
            with httpx.Client(trust_env=False, timeout=10) as http:
                active = http.get(f"{prometheus.url}/api/v1/targets").json()["data"]
            return all(t["labels"].get("pod") != gone for t in active["activeTargets"])

        wait_until(target_dropped, timeout=30, what="the target dropped")
        dropped_at = time.time()
        time.sleep(3 * _SCRAPE_S)

        (series,) = _instant(prometheus, f'up{{pod="{gone}"}}[2m]')
        assert max(ts for ts, _ in series["values"]) <= dropped_at
        assert _instant(prometheus, f'up{{pod="{gone}"}}') == [], "its series went stale"
        assert len(_instant(prometheus, "up == 1")) == 1, "the other pod is still scraped"


def _pod_names(core: client.CoreV1Api, namespace: str) -> set[str]:
    return {p.metadata.name for p in core.list_namespaced_pod(namespace, _request_timeout=_T).items}


def test_prometheus_service_account_is_refused_what_kube_prometheus_does_not_grant(
    control_plane: ControlPlane,
    kube_api: client.ApiClient,
    runner_namespace: str,
    tmp_workdir: Path,
) -> None:
    access = prometheus_access(
        kube_api,
        control_plane.server_url,
        control_plane.ca_cert_path,
        control_plane.pod_network,
        tmp_workdir / "prometheus.token",
    )
    token = access.token_file.read_text()
    ns = f"/api/v1/namespaces/{runner_namespace}"
    with httpx.Client(
        base_url=control_plane.server_url,
        verify=ssl.create_default_context(cafile=access.ca_cert),
        headers={"Authorization": f"Bearer {token}"},
        trust_env=False,
        timeout=_T,
    ) as api:
        # What discovery needs is granted...
        for path in (f"{ns}/pods", f"{ns}/endpoints", f"{ns}/services"):
            assert api.get(path).status_code == 200, path
        slices = f"/apis/discovery.k8s.io/v1/namespaces/{runner_namespace}/endpointslices"
        assert api.get(slices).status_code == 200
        assert api.get("/metrics").status_code == 200

        # ...and nothing beyond it: each of these is a real 403 from RBAC.
        refused = {
            "read secrets": api.get(f"{ns}/secrets"),
            "list nodes": api.get("/api/v1/nodes"),
            "create a pod": api.post(
                f"{ns}/pods",
                json={
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": "intruder"},
                    "spec": {"containers": [{"name": "c", "image": "testpage:v1"}]},
                },
            ),
            "scale a deployment": api.patch(
                f"/apis/apps/v1/namespaces/{runner_namespace}/deployments/web/scale",
                json={"spec": {"replicas": 0}},
                headers={"Content-Type": "application/merge-patch+json"},
            ),
            "impersonate an admin": api.get(
                f"{ns}/secrets", headers={"Impersonate-User": "system:admin"}
            ),
            "impersonate a group": api.get(
                f"{ns}/pods",
                headers={"Impersonate-User": "x", "Impersonate-Group": "system:masters"},
            ),
        }
    statuses = {what: r.status_code for what, r in refused.items()}
    assert statuses == dict.fromkeys(refused, 403), statuses
    for what, response in refused.items():
        assert response.json()["reason"] == "Forbidden", what
        assert "system:serviceaccount:monitoring:prometheus" in response.json()["message"], what
