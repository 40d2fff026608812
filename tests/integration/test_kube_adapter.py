"""``adapters.kubernetes.KubeClient`` against the real kube-apiserver of the local control plane.

Deployments (read, scale, whole-template replace, the guarded state write),
Events, Leases, and the translation of every failure into autocanary's error
types: 404, 403 (RBAC, by impersonating a ServiceAccount that was granted
nothing), 422, 409 and an API server that is not there at all.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from kubernetes import client

from autocanary.adapters.kubernetes import DeploymentRecord, KubeClient, load_api_client
from autocanary.errors import (
    InvalidResource,
    KubernetesForbidden,
    KubernetesUnavailable,
    ResourceNotFound,
    StateConflict,
)
from autocanary.rollout.state import COMMAND_ANNOTATION, STATE_ANNOTATION
from autocanary_testbed.controlplane import ControlPlane
from autocanary_testbed.procs import free_port
from autocanary_testbed.stack import app_deployment
from autocanary_testbed.waiting import wait_until

pytestmark = pytest.mark.integration

READY_S = 90  # a bound for a hang on a loaded 2-core machine, not a timing expectation
JSON = dict[str, Any]


@pytest.fixture
def kube(kube_api: client.ApiClient) -> KubeClient:
    return KubeClient(kube_api, identity="itest-kube")


def create_web(kube: KubeClient, namespace: str, replicas: int = 2) -> DeploymentRecord:
    return kube.create_deployment(
        namespace, app_deployment("web", "web", "stable", "v1", replicas=replicas)
    )


def wait_ready(kube: KubeClient, namespace: str, name: str, replicas: int) -> DeploymentRecord:
    seen: list[DeploymentRecord] = []

    def settled() -> bool:
        record = kube.read_deployment(namespace, name)
        seen[:] = [record]
        return (
            record.observed
            and record.ready == replicas
            and record.available == replicas
            and record.updated == replicas
            and record.current == replicas
        )

    wait_until(settled, timeout=READY_S, what=f"{name} with {replicas} ready pods")
    return seen[0]


def container_env(template: JSON) -> list[str]:
    return [e["name"] for e in template["spec"]["containers"][0].get("env", [])]


# ---- Deployments -----------------------------------------------------------------------------


def test_read_deployment_gives_template_selector_and_status_counts(
    kube: KubeClient, namespace: str
) -> None:
    created = create_web(kube, namespace, replicas=2)
    assert created.ready == 0  # nothing is running yet at creation

    record = wait_ready(kube, namespace, "web", 2)

    assert record.name == "web"
    assert record.namespace == namespace
    assert record.uid == created.uid
    assert record.uid
    assert record.selector == {"app": "web", "track": "stable"}
    assert record.template["metadata"]["labels"] == {
        "app": "web",
        "track": "stable",
        "version": "v1",
    }
    container = record.template["spec"]["containers"][0]
    assert container["image"] == "autocanary/testpage:v1"
    # Read as the API returns it: defaulted fields are present, so hashes see the real shape.
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert record.replicas == 2
    assert (record.ready, record.available, record.updated, record.current) == (2, 2, 2, 2)
    assert record.observed
    assert record.raw["metadata"]["resourceVersion"] == record.resource_version
    assert int(record.resource_version) > int(created.resource_version)


def test_scale_changes_the_replica_count_and_pods_follow(kube: KubeClient, namespace: str) -> None:
    before = create_web(kube, namespace, replicas=1)

    scaled = kube.scale(namespace, "web", 3)

    assert scaled.replicas == 3
    assert scaled.generation == before.generation + 1
    assert wait_ready(kube, namespace, "web", 3).ready == 3

    down = kube.scale(namespace, "web", 0)
    assert down.replicas == 0
    assert wait_ready(kube, namespace, "web", 0).current == 0


def test_replace_template_removes_keys_a_merge_patch_would_keep(
    kube: KubeClient, namespace: str
) -> None:
    original = create_web(kube, namespace, replicas=1)
    with_extras = copy.deepcopy(original.template)
    with_extras["metadata"]["labels"]["extra"] = "yes"
    with_extras["spec"]["containers"][0]["env"].append({"name": "FEATURE_X", "value": "on"})
    kube.replace_template(namespace, "web", with_extras)
    assert kube.read_deployment(namespace, "web").template["metadata"]["labels"]["extra"] == "yes"

    # The control: a JSON merge patch of a template without the label leaves it in place.
    merged = kube.patch_deployment(
        namespace, "web", {"spec": {"template": original.template}}, "merge template"
    )
    assert merged.template["metadata"]["labels"]["extra"] == "yes"

    replaced = kube.replace_template(namespace, "web", original.template)

    for record in (replaced, kube.read_deployment(namespace, "web")):
        assert "extra" not in record.template["metadata"]["labels"]
        assert "FEATURE_X" not in container_env(record.template)
        assert container_env(record.template) == ["VERSION", "POD_IP"]
        assert record.selector == {"app": "web", "track": "stable"}


# ---- the state annotation --------------------------------------------------------------------


def test_write_state_with_the_read_version_succeeds_and_consumes_the_command(
    kube: KubeClient, namespace: str
) -> None:
    create_web(kube, namespace, replicas=1)
    kube.set_command(namespace, "web", "pause")
    read = kube.read_deployment(namespace, "web")
    assert read.annotations[COMMAND_ANNOTATION] == "pause"

    written = kube.write_state(read, '{"phase":"paused"}', consume_command=True, replicas=2)

    again = kube.read_deployment(namespace, "web")
    for record in (written, again):
        assert record.annotations[STATE_ANNOTATION] == '{"phase":"paused"}'
        assert COMMAND_ANNOTATION not in record.annotations
        assert record.replicas == 2  # rode along in the same patch
    assert int(written.resource_version) > int(read.resource_version)


def test_write_state_keeps_the_command_unless_asked_to_consume_it(
    kube: KubeClient, namespace: str
) -> None:
    create_web(kube, namespace, replicas=1)
    kube.set_command(namespace, "web", "resume")

    written = kube.write_state(
        kube.read_deployment(namespace, "web"), '{"phase":"paused"}', consume_command=False
    )

    assert written.annotations[COMMAND_ANNOTATION] == "resume"
    assert written.annotations[STATE_ANNOTATION] == '{"phase":"paused"}'
    assert written.replicas == 1


def test_write_state_after_a_concurrent_writer_conflicts_and_overwrites_nothing(
    kube: KubeClient, namespace: str
) -> None:
    create_web(kube, namespace, replicas=1)
    first = kube.write_state(
        kube.read_deployment(namespace, "web"), '{"phase":"idle"}', consume_command=False
    )
    # Someone (the CLI) writes between our read and our write.
    kube.set_command(namespace, "web", "abort")

    with pytest.raises(StateConflict, match="changed meanwhile") as caught:
        kube.write_state(first, '{"phase":"progressing"}', consume_command=True, replicas=3)

    assert f"{namespace}/web" in str(caught.value)
    after = kube.read_deployment(namespace, "web")
    assert after.annotations[STATE_ANNOTATION] == '{"phase":"idle"}'
    assert after.annotations[COMMAND_ANNOTATION] == "abort"
    assert after.replicas == 1


def test_write_state_survives_changes_that_do_not_touch_what_was_decided_on(
    kube: KubeClient, namespace: str
) -> None:
    # The deployment controller's status updates (and label edits) bump the
    # resourceVersion all the time; they must not make every state write conflict.
    create_web(kube, namespace, replicas=1)
    read = kube.read_deployment(namespace, "web")
    kube.patch_deployment(
        namespace, "web", {"metadata": {"labels": {"team": "web"}}}, "label the Deployment"
    )
    assert kube.read_deployment(namespace, "web").resource_version != read.resource_version

    written = kube.write_state(read, '{"phase":"progressing"}', consume_command=False)

    assert written.annotations[STATE_ANNOTATION] == '{"phase":"progressing"}'
    assert written.raw["metadata"]["labels"]["team"] == "web"


# ---- Events ----------------------------------------------------------------------------------


def test_record_event_and_list_events_in_creation_order(kube: KubeClient, namespace: str) -> None:
    web = create_web(kube, namespace, replicas=0)
    other = kube.create_deployment(
        namespace, app_deployment("other", "other", "stable", "v1", replicas=0)
    )
    reasons = ["ReleaseDetected", "StepAdvanced", "StepAdvanced", "AnalysisFailed", "RolledBack"]
    for i, reason in enumerate(reasons):
        kube.record_event(
            web, reason, f"message {i}", warning=reason in ("AnalysisFailed", "RolledBack")
        )
    kube.record_event(other, "Promoted", "not about web", warning=False)
    kube.record_event(web, "Paused", "x" * 5000, warning=True)

    events = kube.list_events(namespace, "web")

    assert [e["reason"] for e in events] == [*reasons, "Paused"]
    assert [e["message"] for e in events[:5]] == [f"message {i}" for i in range(5)]
    assert [e["type"] for e in events] == [
        "Normal",
        "Normal",
        "Normal",
        "Warning",
        "Warning",
        "Warning",
    ]
    involved = events[0]["involvedObject"]
    assert (involved["kind"], involved["name"], involved["uid"]) == ("Deployment", "web", web.uid)
    assert events[0]["reportingInstance"] == "itest-kube"
    assert events[0]["source"]["component"] == "autocanary"
    assert events[-1]["message"] == "x" * 1024  # long messages are cut, not rejected
    assert [e["reason"] for e in kube.list_events(namespace, "other")] == ["Promoted"]
    assert kube.list_events(namespace, "nobody-here") == []


# ---- errors ----------------------------------------------------------------------------------


def test_a_missing_deployment_is_resource_not_found(kube: KubeClient, namespace: str) -> None:
    with pytest.raises(ResourceNotFound, match=f"{namespace}/absent") as caught:
        kube.read_deployment(namespace, "absent")
    assert "not found" in str(caught.value)

    with pytest.raises(ResourceNotFound):
        kube.scale(namespace, "absent", 2)


def test_rbac_denial_is_forbidden_with_an_actionable_message(
    control_plane: ControlPlane, kube: KubeClient, namespace: str
) -> None:
    create_web(kube, namespace, replicas=0)
    user = f"system:serviceaccount:{namespace}:nobody"
    with control_plane.impersonating_client(user) as api:
        nobody = KubeClient(api, identity="nobody")

        with pytest.raises(KubernetesForbidden) as reading:
            nobody.read_deployment(namespace, "web")
        with pytest.raises(KubernetesForbidden) as scaling:
            nobody.scale(namespace, "web", 5)
        with pytest.raises(KubernetesForbidden):
            nobody.read_lease(namespace, "autocanary")

    message = str(reading.value)
    assert f"read Deployment {namespace}/web" in message
    assert "403" in message
    assert user in message  # the API server names who was denied what
    assert "Role" in message
    assert "deploy/rbac.yaml" in message
    assert "scale to 5" in str(scaling.value)
    assert kube.read_deployment(namespace, "web").replicas == 0


def test_an_invalid_patch_is_invalid_resource(kube: KubeClient, namespace: str) -> None:
    create_web(kube, namespace, replicas=1)

    with pytest.raises(InvalidResource, match=r"rejected by the API server \(422\)") as caught:
        kube.scale(namespace, "web", -1)

    assert "replicas" in str(caught.value)
    assert kube.read_deployment(namespace, "web").replicas == 1


def test_a_template_breaking_the_selector_is_invalid_resource(
    kube: KubeClient, namespace: str
) -> None:
    record = create_web(kube, namespace, replicas=1)
    broken = copy.deepcopy(record.template)
    broken["metadata"]["labels"] = {"app": "something-else"}

    with pytest.raises(InvalidResource, match="selector"):
        kube.replace_template(namespace, "web", broken)


@pytest.mark.timeout(120)  # a bound on a hang: the client's own timeouts must end it sooner
def test_an_unreachable_api_server_is_kubernetes_unavailable(control_plane: ControlPlane) -> None:
    api = load_api_client(str(control_plane.kubeconfig_path))
    port = free_port()  # nothing listens there
    api.configuration.host = f"https://127.0.0.1:{port}"
    try:
        gone = KubeClient(api)
        with pytest.raises(KubernetesUnavailable, match="cannot reach the API server") as caught:
            gone.read_deployment("default", "web")
        with pytest.raises(KubernetesUnavailable):
            gone.read_lease("default", "autocanary")
        with pytest.raises(KubernetesUnavailable):
            gone.scale("default", "web", 1)
    finally:
        api.close()  # type: ignore[no-untyped-call]
    assert "read Deployment default/web" in str(caught.value)
    assert isinstance(caught.value.__cause__, Exception)  # chained, not swallowed


# ---- Leases ----------------------------------------------------------------------------------


def lease_body(namespace: str, holder: str) -> JSON:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "autocanary", "namespace": namespace},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "leaseTransitions": 0},
    }


def test_leases_read_create_and_replace_guarded_by_resource_version(
    kube: KubeClient, namespace: str
) -> None:
    assert kube.read_lease(namespace, "autocanary") is None

    created = kube.create_lease(namespace, lease_body(namespace, "a"))
    assert created["spec"]["holderIdentity"] == "a"
    with pytest.raises(StateConflict):
        kube.create_lease(namespace, lease_body(namespace, "b"))  # someone created it first

    read = kube.read_lease(namespace, "autocanary")
    assert read is not None
    assert read["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    stale = copy.deepcopy(read)
    read["spec"]["holderIdentity"] = "b"
    read["spec"]["leaseTransitions"] = 1
    replaced = kube.replace_lease(namespace, read)
    assert replaced["spec"]["holderIdentity"] == "b"

    stale["spec"]["holderIdentity"] = "c"
    with pytest.raises(StateConflict, match=f"update Lease {namespace}/autocanary"):
        kube.replace_lease(namespace, stale)

    final = kube.read_lease(namespace, "autocanary")
    assert final is not None
    assert final["spec"]["holderIdentity"] == "b"
    assert final["spec"]["leaseTransitions"] == 1


def test_replace_lease_deleted_meanwhile_conflicts_and_can_be_created_again(
    kube: KubeClient, kube_api: client.ApiClient, namespace: str
) -> None:
    created = kube.create_lease(namespace, lease_body(namespace, "a"))
    client.CoordinationV1Api(kube_api).delete_namespaced_lease(
        "autocanary", namespace, _request_timeout=10
    )
    # The API server reports an update of a vanished object as a failed precondition (409):
    # for the elector that is "someone else changed it", and the next round starts over.
    with pytest.raises(StateConflict):
        kube.replace_lease(namespace, created)
    assert kube.read_lease(namespace, "autocanary") is None
    assert kube.create_lease(namespace, lease_body(namespace, "b"))["spec"]["holderIdentity"] == "b"


def test_state_annotation_round_trips_arbitrary_json(kube: KubeClient, namespace: str) -> None:
    create_web(kube, namespace, replicas=0)
    state = json.dumps({"phase": "progressing", "message": 'quotes " and\nnewlines ✓'})

    kube.write_state(kube.read_deployment(namespace, "web"), state, consume_command=False)

    assert kube.read_deployment(namespace, "web").annotations[STATE_ANNOTATION] == state
