"""Blue/green's switch, ``KubeClient.switch_selector``, on the real API server and test bed.

Two complete Deployments (blue: v1, green: v2) run as pod processes on their
pod IPs; Service ``web`` selects blue by its version label, and a proxy follows
its EndpointSlices as kube-proxy does. The switch must be one write of the
Service (the API's own watch history says so), and the proxy, fed by the real
endpoint-slice controller, must never hold pods of both versions at once.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from kubernetes import client, watch

from autocanary.adapters.kubernetes import KubeClient
from autocanary.errors import InvalidResource, ResourceNotFound, StateConflict
from autocanary_testbed.controlplane import ControlPlane
from autocanary_testbed.kubeproxy import ServiceEndpoints
from autocanary_testbed.podrunner import PodRunner
from autocanary_testbed.serviceproxy import ServiceProxy
from autocanary_testbed.stack import app_deployment
from autocanary_testbed.waiting import wait_until

pytestmark = pytest.mark.integration

_T = 10  # seconds per API call
_READY_S = 90  # a bound for a hang on a loaded 2-core machine, not a timing expectation


def web_service(version: str) -> Any:  # Any: the client accepts a dict for a V1Service
    """Service ``web`` selecting one version of the app, as blue/green's active Service does."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "selector": {"app": "web", "version": version},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }


@pytest.fixture
def kube(kube_api: client.ApiClient) -> KubeClient:
    return KubeClient(kube_api, identity="itest-switch")


def selector_writes(
    kube_api: client.ApiClient, namespace: str, since: str
) -> list[tuple[str, dict[str, str]]]:
    """Every change of Service ``web`` after resourceVersion ``since``: (event type, selector)."""
    seen: list[tuple[str, dict[str, str]]] = []
    stream: Any = watch.Watch()  # type: ignore[no-untyped-call]  # untyped in kubernetes
    for event in stream.stream(
        client.CoreV1Api(kube_api).list_namespaced_service,
        namespace,
        field_selector="metadata.name=web",
        resource_version=since,
        timeout_seconds=2,
        _request_timeout=(5.0, 15.0),
    ):
        seen.append((event["type"], dict(event["object"].spec.selector or {})))
    return seen


def test_a_switch_is_one_write_and_the_rotation_never_holds_both_versions(
    control_plane: ControlPlane,
    kube_api: client.ApiClient,
    kube: KubeClient,
    runner_namespace: str,
    pod_runner: PodRunner,
) -> None:
    ns = runner_namespace
    apps = client.AppsV1Api(kube_api)
    for name, track, version in (("web-blue", "blue", "v1"), ("web-green", "green", "v2")):
        body: Any = app_deployment(name, "web", track, version, replicas=2)
        apps.create_namespaced_deployment(ns, body, _request_timeout=_T)
    body = web_service("v1")
    client.CoreV1Api(kube_api).create_namespaced_service(ns, body, _request_timeout=_T)

    # Every rotation the proxy is given, in order, from the first listing on.
    rotations: list[frozenset[str]] = []
    lock = threading.Lock()

    def changed(backends: list[str]) -> None:
        with lock:
            rotations.append(frozenset(backends))

    def version_of() -> dict[str, str]:
        pods: list[Any] = (
            client.CoreV1Api(kube_api).list_namespaced_pod(ns, _request_timeout=_T).items
        )
        return {
            control_plane.pod_network.host_address(p.status.pod_ip, 8080): p.metadata.labels[
                "version"
            ]
            for p in pods
            if p.status.pod_ip
        }

    with (
        ServiceProxy() as proxy,
        ServiceEndpoints(
            kube_api,
            control_plane.pod_network,
            ns,
            "web",
            proxy,
            port_name="http",
            on_change=changed,
        ),
    ):

        def rotation_is(version: str) -> bool:
            versions = version_of()
            backends = proxy.backends
            return len(backends) == 2 and {versions.get(b) for b in backends} == {version}

        wait_until(lambda: rotation_is("v1"), timeout=_READY_S, what="blue in the rotation")
        # Green is up at full size beside blue, Ready, yet serves no user.
        wait_until(
            lambda: (
                sorted(version_of().values()) == ["v1", "v1", "v2", "v2"]
                and len(pod_runner.pods()) == 4
            ),
            timeout=_READY_S,
            what="green's two pods running",
        )
        before = kube.read_service(ns, "web")
        assert before.selector == {"app": "web", "version": "v1"}

        after = kube.switch_selector(before, {"app": "web", "version": "v2"})

        assert after.selector == {"app": "web", "version": "v2"}
        assert selector_writes(kube_api, ns, before.resource_version) == [
            ("MODIFIED", {"app": "web", "version": "v2"})
        ], "exactly one write, straight from blue to green"
        wait_until(lambda: rotation_is("v2"), timeout=_READY_S, what="green in the rotation")

    versions = version_of()
    with lock:
        seen = list(rotations)
    shown = [sorted(versions[b] for b in r) for r in seen]
    mixed = [r for r in shown if len(set(r)) > 1]
    assert mixed == [], f"a rotation held both versions: {shown}"
    # From blue's full rotation on, the Service never went without a pod. The
    # endpoint-slice controller may publish green's two endpoints in two writes
    # (seen: [v2] then [v2, v2]); both Deployments stay at full size throughout.
    full = shown.index(["v1", "v1"])
    assert all(r for r in shown[full:]), f"the Service went empty during the switch: {shown}"
    assert len(pod_runner.pods()) == 4, "both versions still at full size"
    assert shown[-1] == ["v2", "v2"], shown


def test_a_switch_on_a_stale_read_conflicts_and_leaves_the_service_alone(
    kube_api: client.ApiClient, kube: KubeClient, namespace: str
) -> None:
    body = web_service("v1")
    client.CoreV1Api(kube_api).create_namespaced_service(namespace, body, _request_timeout=_T)
    stale = kube.read_service(namespace, "web")
    # Someone else (an SRE, another replica) changes the Service meanwhile.
    client.CoreV1Api(kube_api).patch_namespaced_service(
        "web", namespace, {"metadata": {"labels": {"touched": "yes"}}}, _request_timeout=_T
    )

    with pytest.raises(StateConflict, match=r"switch Service .*/web to app=web,version=v2"):
        kube.switch_selector(stale, {"app": "web", "version": "v2"})

    assert kube.read_service(namespace, "web").selector == {"app": "web", "version": "v1"}


def test_a_switch_replaces_the_whole_selector(
    kube_api: client.ApiClient, kube: KubeClient, namespace: str
) -> None:
    body = web_service("v1")
    body["spec"]["selector"]["track"] = "blue"
    client.CoreV1Api(kube_api).create_namespaced_service(namespace, body, _request_timeout=_T)
    service = kube.read_service(namespace, "web")

    after = kube.switch_selector(service, {"app": "web", "version": "v2"})

    # A key the new selector lacks is gone, not kept by the merge (it would select nothing).
    assert after.selector == {"app": "web", "version": "v2"}
    assert kube.read_service(namespace, "web").selector == after.selector


def test_a_missing_service_and_an_empty_selector_are_refused_by_name(
    kube_api: client.ApiClient, kube: KubeClient, namespace: str
) -> None:
    with pytest.raises(ResourceNotFound, match=f"read Service {namespace}/nowhere"):
        kube.read_service(namespace, "nowhere")
    body = web_service("v1")
    client.CoreV1Api(kube_api).create_namespaced_service(namespace, body, _request_timeout=_T)

    with pytest.raises(InvalidResource, match="refusing an empty selector"):
        kube.switch_selector(kube.read_service(namespace, "web"), {})

    assert kube.read_service(namespace, "web").selector == {"app": "web", "version": "v1"}
