"""``adapters.kubernetes.KubeClient`` against the real kube-apiserver of the local control plane.

Deployments (read, scale, whole-template replace, the guarded release record),
the rollout's state ConfigMap (owned by the canary, guarded, migrated from the
annotation of older daemons), commands consumed as read,
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

from autocanary.adapters.kubernetes import (
    DeploymentRecord,
    KubeClient,
    command_mark,
    load_api_client,
)
from autocanary.errors import (
    InvalidResource,
    KubernetesForbidden,
    KubernetesUnavailable,
    ResourceNotFound,
    StateConflict,
)
from autocanary.rollout.state import (
    COMMAND_ANNOTATION,
    RELEASE_ANNOTATION,
    STATE_ANNOTATION,
    STATE_KEY,
    state_object_name,
)
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


# ---- the rollout's state and the stable's release record -----------------------------------


def test_write_record_rides_the_replicas_along_and_survives_status_changes(
    kube: KubeClient, namespace: str
) -> None:
    # The deployment controller's status updates (and label edits) bump the
    # resourceVersion all the time; they must not make every record write conflict.
    create_web(kube, namespace, replicas=1)
    read = kube.read_deployment(namespace, "web")
    kube.patch_deployment(
        namespace, "web", {"metadata": {"labels": {"team": "web"}}}, "label the Deployment"
    )
    assert kube.read_deployment(namespace, "web").resource_version != read.resource_version

    written = kube.write_record(read, '{"phase":"progressing"}', replicas=2)

    for record in (written, kube.read_deployment(namespace, "web")):
        assert record.annotations[RELEASE_ANNOTATION] == '{"phase":"progressing"}'
        assert record.replicas == 2  # rode along in the same patch
        assert record.raw["metadata"]["labels"]["team"] == "web"


def test_write_record_after_a_concurrent_writer_conflicts_and_overwrites_nothing(
    kube: KubeClient, namespace: str
) -> None:
    create_web(kube, namespace, replicas=1)
    first = kube.write_record(kube.read_deployment(namespace, "web"), '{"phase":"idle"}')
    # Another replica writes the record between our read and our write.
    kube.write_record(kube.read_deployment(namespace, "web"), '{"phase":"succeeded"}')

    with pytest.raises(StateConflict, match="changed meanwhile") as caught:
        kube.write_record(first, '{"phase":"progressing"}', replicas=3)

    assert f"{namespace}/web" in str(caught.value)
    after = kube.read_deployment(namespace, "web")
    assert after.annotations[RELEASE_ANNOTATION] == '{"phase":"succeeded"}'
    assert after.replicas == 1


def test_state_lives_in_a_configmap_owned_by_the_canary_and_guarded_by_its_version(
    kube: KubeClient, namespace: str, kube_api: client.ApiClient
) -> None:
    canary = create_web(kube, namespace, replicas=0)
    before = kube.read_state(canary)
    assert (before.source, before.text, before.resource_version) == ("none", None, "")
    state = json.dumps({"phase": "progressing", "message": 'quotes " and\nnewlines ✓'})

    created = kube.save_state(canary, before, state)

    config_map = client.CoreV1Api(kube_api).read_namespaced_config_map(
        state_object_name("web"), namespace
    )
    assert config_map.data == {STATE_KEY: state}
    (owner,) = config_map.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid) == ("Deployment", "web", canary.uid)
    read = kube.read_state(kube.read_deployment(namespace, "web"))
    assert (read.source, read.text) == ("configmap", state)
    assert read.resource_version == created.resource_version
    # The Deployment is not touched: no generation bump, nothing for its ReplicaSets.
    assert kube.read_deployment(namespace, "web").generation == canary.generation

    replaced = kube.save_state(canary, read, '{"phase":"paused"}')
    assert kube.read_state(canary).text == '{"phase":"paused"}'
    # A writer holding the older version (another replica) conflicts and overwrites nothing.
    with pytest.raises(StateConflict):
        kube.save_state(canary, read, '{"phase":"idle"}')
    with pytest.raises(StateConflict):
        kube.save_state(canary, before, '{"phase":"idle"}')  # created by someone else first
    assert kube.read_state(canary).resource_version == replaced.resource_version


def test_a_state_left_by_a_deleted_canary_of_the_same_name_is_never_read(
    kube: KubeClient, namespace: str
) -> None:
    old = create_web(kube, namespace, replicas=0)
    kube.save_state(old, kube.read_state(old), '{"phase":"progressing"}')
    # Recreated while its ConfigMap is still there (orphaned here, so that the garbage
    # collector leaves it, as when it has not got to it yet): that state is stale.
    client.AppsV1Api(kube.api_client).delete_namespaced_deployment(
        "web", namespace, propagation_policy="Orphan"
    )
    wait_until(lambda: _gone(kube, namespace, "web"), timeout=READY_S, what="web deleted")
    new = create_web(kube, namespace, replicas=0)
    assert new.uid != old.uid

    stale = kube.read_state(new)
    assert (stale.source, stale.text) == ("none", None)
    assert stale.resource_version  # taken over by the next write, owner and all
    kube.save_state(new, stale, '{"phase":"idle"}')
    taken = kube.read_state(new)
    assert (taken.source, taken.text) == ("configmap", '{"phase":"idle"}')


def _gone(kube: KubeClient, namespace: str, name: str) -> bool:
    try:
        kube.read_deployment(namespace, name)
    except ResourceNotFound:
        return True
    return False


def test_an_older_daemons_annotation_is_read_until_the_configmap_holds_the_state(
    kube: KubeClient, namespace: str
) -> None:
    create_web(kube, namespace, replicas=0)
    # "<" and "&" are escaped by the API server's JSON, never by Python's: compared as read.
    old, new, other = '{"a":"<= 1 & ✓"}', '{"a":2}', '{"a":"<= 0"}'
    kube.patch_deployment(
        namespace, "web", {"metadata": {"annotations": {STATE_ANNOTATION: old}}}, "old"
    )
    canary = kube.read_deployment(namespace, "web")
    legacy = kube.read_state(canary)
    assert (legacy.source, legacy.text, legacy.legacy) == ("annotation", old, old)
    assert "autocanary.io/state annotation on Deployment" in legacy.where

    kube.save_state(canary, legacy, new)
    both = kube.read_state(kube.read_deployment(namespace, "web"))
    assert (both.source, both.text, both.legacy) == ("configmap", new, old)

    assert not kube.drop_legacy_state(canary, other)  # not what was read: kept
    assert kube.drop_legacy_state(canary, old)
    after = kube.read_state(kube.read_deployment(namespace, "web"))
    assert (after.source, after.text, after.legacy) == ("configmap", new, None)


def test_a_command_is_consumed_only_as_it_was_read(kube: KubeClient, namespace: str) -> None:
    create_web(kube, namespace, replicas=0)
    kube.set_command(namespace, "web", "pause")
    read = kube.read_deployment(namespace, "web")
    mark = command_mark(read, "pause")
    # Set again after the read (removed, then set anew): another generation, another mark.
    kube.patch_deployment(
        namespace, "web", {"metadata": {"annotations": {COMMAND_ANNOTATION: None}}}, "rm"
    )
    kube.set_command(namespace, "web", "pause")
    again = kube.read_deployment(namespace, "web")
    assert command_mark(again, "pause") != mark

    assert not kube.consume_command(read, "pause")
    assert kube.read_deployment(namespace, "web").annotations[COMMAND_ANNOTATION] == "pause"
    assert kube.consume_command(again, "pause")
    assert COMMAND_ANNOTATION not in kube.read_deployment(namespace, "web").annotations


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
