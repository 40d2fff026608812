"""The local control plane runs Deployments like a real cluster: pods Ready via KWOK,
scaling, and new ReplicaSets on template changes."""

from __future__ import annotations

import pytest
from kubernetes import client

from autocanary_testbed.controlplane import NODE_NAME, ControlPlane
from autocanary_testbed.waiting import wait_until

pytestmark = pytest.mark.integration

_T = 10  # seconds per API call
_ROLLOUT_S = 90  # generous: a loaded 2-core CI machine


def deployment(name: str, replicas: int, version: str) -> client.V1Deployment:
    labels = {"app": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={**labels, "version": version}),
                spec=client.V1PodSpec(
                    containers=[client.V1Container(name="app", image=f"example.test/app:{version}")]
                ),
            ),
        ),
    )


def rolled_out(apps: client.AppsV1Api, namespace: str, name: str, replicas: int) -> bool:
    d = apps.read_namespaced_deployment(name, namespace, _request_timeout=_T)
    s = d.status
    return (
        (s.observed_generation or 0) >= d.metadata.generation
        and (s.updated_replicas or 0) == replicas
        and (s.available_replicas or 0) == replicas
        and (s.replicas or 0) == replicas
    )


def pods_of(core: client.CoreV1Api, namespace: str, app: str) -> list[client.V1Pod]:
    pods: list[client.V1Pod] = core.list_namespaced_pod(
        namespace, label_selector=f"app={app}", _request_timeout=_T
    ).items
    return pods


def test_control_plane_reports_its_version_and_a_ready_kwok_node(
    control_plane: ControlPlane, kube_api: client.ApiClient
) -> None:
    version = client.VersionApi(kube_api).get_code(_request_timeout=_T)
    assert version.git_version == "v1.36.3"
    assert control_plane.server_url.startswith("https://127.0.0.1:")

    node = client.CoreV1Api(kube_api).read_node(NODE_NAME, _request_timeout=_T)
    ready = [c for c in node.status.conditions if c.type == "Ready"]
    assert [c.status for c in ready] == ["True"]
    assert not node.spec.taints


def test_deployment_scales_and_rolls_out_a_new_replicaset(
    kube_api: client.ApiClient, namespace: str
) -> None:
    apps = client.AppsV1Api(kube_api)
    core = client.CoreV1Api(kube_api)

    apps.create_namespaced_deployment(namespace, deployment("web", 3, "v1"), _request_timeout=_T)
    wait_until(
        lambda: rolled_out(apps, namespace, "web", 3), timeout=_ROLLOUT_S, what="3 available"
    )
    pods = pods_of(core, namespace, "web")
    assert len(pods) == 3
    assert all(p.spec.node_name == NODE_NAME for p in pods)
    assert all(p.status.phase == "Running" for p in pods)
    assert all(
        any(c.type == "Ready" and c.status == "True" for c in p.status.conditions) for p in pods
    )

    apps.patch_namespaced_deployment_scale(
        "web", namespace, {"spec": {"replicas": 1}}, _request_timeout=_T
    )
    wait_until(
        lambda: len(pods_of(core, namespace, "web")) == 1,
        timeout=_ROLLOUT_S,
        what="scaled down to 1 pod",
    )
    assert apps.read_namespaced_deployment_scale("web", namespace).status.replicas == 1

    first_rs = apps.list_namespaced_replica_set(namespace, _request_timeout=_T).items
    assert len(first_rs) == 1
    apps.patch_namespaced_deployment(
        "web",
        namespace,
        {"spec": {"template": {"metadata": {"labels": {"version": "v2"}}}}},
        _request_timeout=_T,
    )
    wait_until(
        lambda: rolled_out(apps, namespace, "web", 1), timeout=_ROLLOUT_S, what="v2 rolled out"
    )
    replica_sets = apps.list_namespaced_replica_set(namespace, _request_timeout=_T).items
    assert len(replica_sets) == 2
    (new_rs,) = [rs for rs in replica_sets if rs.metadata.name != first_rs[0].metadata.name]
    assert new_rs.spec.template.metadata.labels["version"] == "v2"
    assert new_rs.status.ready_replicas == 1
    wait_until(
        lambda: [p.metadata.labels["version"] for p in pods_of(core, namespace, "web")] == ["v2"],
        timeout=_ROLLOUT_S,
        what="only the v2 pod left",
    )
