"""RBAC is enforced on the local control plane: impersonating a ServiceAccount bound to a
narrow Role allows exactly what the Role grants."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from kubernetes import client
from kubernetes.client import ApiException

from autocanary_testbed.controlplane import ControlPlane
from autocanary_testbed.waiting import wait_until

pytestmark = pytest.mark.integration

_T = 10


@pytest.fixture
def other_namespace(control_plane: ControlPlane, namespace: str) -> Iterator[str]:
    name = f"{namespace}-other"
    control_plane.create_namespace(name)
    try:
        yield name
    finally:
        control_plane.delete_namespace(name)


def deployment(name: str) -> client.V1Deployment:
    labels = {"app": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    containers=[client.V1Container(name="app", image="example.test/app:v1")]
                ),
            ),
        ),
    )


def grant_deployment_patching(api: client.ApiClient, namespace: str, sa: str) -> None:
    client.CoreV1Api(api).create_namespaced_service_account(
        namespace,
        client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=sa)),
        _request_timeout=_T,
    )
    rbac = client.RbacAuthorizationV1Api(api)
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="deployment-patcher"),
            rules=[
                client.V1PolicyRule(
                    api_groups=["apps"],
                    resources=["deployments"],
                    verbs=["get", "list", "watch", "patch"],
                )
            ],
        ),
        _request_timeout=_T,
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="deployment-patcher"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="deployment-patcher"
            ),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name=sa, namespace=namespace)],
        ),
        _request_timeout=_T,
    )


def status_of(call: Callable[[], object]) -> int:
    """Run an API call and return its HTTP status (200 when it succeeds)."""
    try:
        call()
    except ApiException as e:
        return int(e.status)
    return 200


def test_service_account_may_patch_deployments_in_its_namespace_only(
    control_plane: ControlPlane,
    kube_api: client.ApiClient,
    namespace: str,
    other_namespace: str,
) -> None:
    admin_apps = client.AppsV1Api(kube_api)
    admin_apps.create_namespaced_deployment(namespace, deployment("web"), _request_timeout=_T)
    admin_apps.create_namespaced_deployment(other_namespace, deployment("web"), _request_timeout=_T)
    client.CoreV1Api(kube_api).create_namespaced_secret(
        namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name="token"), string_data={"k": "v"}),
        _request_timeout=_T,
    )
    grant_deployment_patching(kube_api, namespace, "autocanary")

    with control_plane.impersonating_client(f"system:serviceaccount:{namespace}:autocanary") as sa:
        apps = client.AppsV1Api(sa)
        core = client.CoreV1Api(sa)

        def read_own() -> object:
            return apps.read_namespaced_deployment("web", namespace, _request_timeout=_T)

        # The RBAC authorizer learns of the new binding through a watch: wait for it.
        wait_until(lambda: status_of(read_own) == 200, timeout=30, what="binding effective")

        patched = apps.patch_namespaced_deployment(
            "web", namespace, {"metadata": {"annotations": {"touched": "yes"}}}, _request_timeout=_T
        )
        assert patched.metadata.annotations["touched"] == "yes"
        assert [d.metadata.name for d in apps.list_namespaced_deployment(namespace).items] == [
            "web"
        ]

        assert (
            status_of(lambda: core.read_namespaced_secret("token", namespace, _request_timeout=_T))
            == 403
        )
        assert (
            status_of(
                lambda: apps.read_namespaced_deployment("web", other_namespace, _request_timeout=_T)
            )
            == 403
        )
        assert status_of(lambda: apps.delete_namespaced_deployment("web", namespace)) == 403

    with control_plane.impersonating_client(
        "someone", groups=["team-a", "system:authenticated"]
    ) as someone:
        review = client.AuthenticationV1Api(someone).create_self_subject_review(
            client.V1SelfSubjectReview(), _request_timeout=_T
        )
        assert review.status.user_info.username == "someone"
        assert set(review.status.user_info.groups) == {"team-a", "system:authenticated"}
