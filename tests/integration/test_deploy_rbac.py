"""deploy/ applied to the real control plane: the daemon's ServiceAccount may do its job, no more.

deploy/ and deploy/example are rendered by kubectl's kustomize, moved to this
test's own namespaces (the daemon's, the app's; another namespace stands for
everything else) and applied with ``kubectl apply``. Then the daemon's own
code runs as ``system:serviceaccount:<daemon namespace>:autocanary``
(impersonated): :class:`KubeClient` reads, scales, re-templates and
annotates the rollout's Deployments, records an Event, and two
:class:`LeaderElector` replicas contend for the Lease. Every other call tried
is refused, and the API server's own summary of the account's permissions
(SelfSubjectRulesReview) lists nothing beyond those calls. The example's probe
is checked the same way: its code follows the Service's endpoints as its own
ServiceAccount, which may do nothing else.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client import ApiException
from kustomize_render import (
    APP_NAMESPACE,
    DAEMON_NAMESPACE,
    DEPLOY,
    Obj,
    kubectl,
    one,
    render,
    retarget,
)

from autocanary.adapters.kube_watch import StateCache
from autocanary.adapters.kubernetes import KubeClient
from autocanary.adapters.leader import LeaderElector
from autocanary.apps.probe_service import ServiceFollower, ServiceRef
from autocanary.config.loader import parse_config
from autocanary.config.models import Config, RolloutConfig
from autocanary.errors import KubernetesForbidden, StateConflict
from autocanary.rollout import state as state_codec
from autocanary.rollout.state import RolloutState, state_object_name
from autocanary_testbed.controlplane import ControlPlane
from autocanary_testbed.waiting import wait_until

pytestmark = pytest.mark.integration

_T = 10
#: Rules every authenticated user has (system:basic-user): asking what one may do.
_SELF_REVIEWS = {"authorization.k8s.io", "authentication.k8s.io"}


@pytest.fixture
def app_namespace(control_plane: ControlPlane, namespace: str) -> Iterator[str]:
    name = f"{namespace}-app"
    control_plane.create_namespace(name)
    try:
        yield name
    finally:
        control_plane.delete_namespace(name)


@pytest.fixture
def elsewhere(control_plane: ControlPlane, namespace: str) -> Iterator[str]:
    name = f"{namespace}-elsewhere"
    control_plane.create_namespace(name)
    try:
        yield name
    finally:
        control_plane.delete_namespace(name)


def apply(control_plane: ControlPlane, objects: list[Obj], workdir: Path) -> str:
    """``kubectl apply`` the objects as the admin; returns kubectl's output."""
    manifest = workdir / "manifest.yaml"
    manifest.write_text(yaml.safe_dump_all(objects), encoding="utf-8")
    result = subprocess.run(
        [
            kubectl(),
            "--kubeconfig",
            str(control_plane.kubeconfig_path),
            "apply",
            "-f",
            str(manifest),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"kubectl apply failed:\n{result.stdout}{result.stderr}"
    return result.stdout


def status_of(call: Callable[[], object]) -> int:
    """Run an API call and return its HTTP status (200 when it succeeds)."""
    try:
        call()
    except ApiException as e:
        return int(e.status)
    return 200


def pod_count(core: client.CoreV1Api, namespace: str, selector: str) -> int:
    pods = core.list_namespaced_pod(namespace, label_selector=selector, _request_timeout=_T)
    return len(pods.items)


def rules_in(sa: client.ApiClient, namespace: str) -> set[tuple[str, str, str, str]]:
    """(apiGroup, resource, verb, resourceName or '*') the account may use in ``namespace``."""
    review = client.AuthorizationV1Api(sa).create_self_subject_rules_review(
        client.V1SelfSubjectRulesReview(
            spec=client.V1SelfSubjectRulesReviewSpec(namespace=namespace)
        ),
        _request_timeout=_T,
    )
    status = review.status
    assert status is not None
    assert not status.incomplete, status.evaluation_error
    return {
        (group, resource, verb, name)
        for rule in status.resource_rules
        for group in rule.api_groups or [""]
        for resource in rule.resources or []
        for verb in rule.verbs
        for name in rule.resource_names or ["*"]
        if group not in _SELF_REVIEWS
    }


@pytest.fixture
def installed(
    control_plane: ControlPlane,
    kube_api: client.ApiClient,
    namespace: str,
    app_namespace: str,
    elsewhere: str,
    tmp_workdir: Path,
) -> tuple[Config, RolloutConfig]:
    """deploy/example and deploy/ applied in this test's namespaces; the config they carry."""
    moves = {DAEMON_NAMESPACE: namespace, APP_NAMESPACE: app_namespace}
    example = retarget(render(DEPLOY / "example"), moves)
    daemon = retarget(render(DEPLOY), moves)
    apply(control_plane, example + daemon, tmp_workdir)

    # Something the daemon must not touch: the same app in another namespace, and a Secret
    # (the Slack URL) right next to it.
    copy: Any = {**one(example, "Deployment", "testpage"), "metadata": {"name": "testpage"}}
    client.AppsV1Api(kube_api).create_namespaced_deployment(elsewhere, copy, _request_timeout=_T)
    client.CoreV1Api(kube_api).create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="autocanary-slack"),
            string_data={"url": "https://hooks.slack.invalid/T000/B000/XXXX"},
        ),
        _request_timeout=_T,
    )

    config = parse_config(
        one(daemon, "ConfigMap", "autocanary-config")["data"]["config.yaml"], "ConfigMap"
    )
    (rollout,) = config.rollouts
    assert rollout.namespace == APP_NAMESPACE
    return config, rollout.model_copy(update={"namespace": app_namespace})


def test_manifests_apply_and_their_pods_pass_the_restricted_pod_security_standard(
    kube_api: client.ApiClient,
    installed: tuple[Config, RolloutConfig],
    namespace: str,
    app_namespace: str,
) -> None:
    core = client.CoreV1Api(kube_api)
    for ns in (namespace, app_namespace):
        meta = core.read_namespace(ns, _request_timeout=_T).metadata
        assert meta is not None
        assert (meta.labels or {}).get("pod-security.kubernetes.io/enforce") == "restricted"
    # Admission enforces it here: a pod with no security context at all is refused ...
    bare: Any = {
        "metadata": {"name": "bare"},
        "spec": {"containers": [{"name": "c", "image": "autocanary/autocanary:0.1.0"}]},
    }
    refused = status_of(
        lambda: core.create_namespaced_pod(app_namespace, bare, _request_timeout=_T)
    )
    assert refused == 403
    # ... so the ReplicaSet controller creates the manifests' pods only if they comply.
    expected = [
        (namespace, "app.kubernetes.io/name=autocanary", 2),
        (app_namespace, "app=testpage", 3),
        (app_namespace, "app=probe", 1),
    ]
    for ns, selector, count in expected:
        wait_until(
            lambda ns=ns, selector=selector, count=count: pod_count(core, ns, selector) == count,  # type: ignore[misc]
            timeout=60,
            what=f"{count} pods {selector} created in {ns}",
        )


def test_daemon_service_account_can_do_everything_the_daemon_does(
    control_plane: ControlPlane,
    kube_api: client.ApiClient,
    installed: tuple[Config, RolloutConfig],
    namespace: str,
    app_namespace: str,
) -> None:
    config, rollout = installed
    user = f"system:serviceaccount:{namespace}:autocanary"
    with (
        control_plane.impersonating_client(user) as sa_a,
        control_plane.impersonating_client(user) as sa_b,
    ):
        kube = KubeClient(sa_a, identity="autocanary-a")

        def readable() -> bool:
            try:
                kube.read_deployment(app_namespace, rollout.stable)
            except KubernetesForbidden:
                return False  # the RBAC authorizer learns of new bindings through a watch
            return True

        wait_until(readable, timeout=30, what="the RoleBindings effective")

        # A release: the canary re-templated (JSON patch) and scaled (merge patch) ...
        canary = kube.read_deployment(app_namespace, rollout.canary_name)
        template: dict[str, Any] = canary.template
        template["metadata"]["labels"][rollout.version_label] = "v2"
        kube.replace_template(app_namespace, rollout.canary_name, template)
        assert kube.scale(app_namespace, rollout.canary_name, 1).replicas == 1
        stable = kube.scale(app_namespace, rollout.stable, 2)
        assert stable.replicas == 2

        # ... its state kept in its own ConfigMap, created once, then replaced guarded by
        # the resourceVersion read; the phase mirrored on the canary; a command consumed;
        # the release's record on the stable ...
        canary = kube.read_deployment(app_namespace, rollout.canary_name)
        state = RolloutState(phase="progressing", total=3, revision="0123abcd", canary_version="v2")
        created = kube.save_state(canary, kube.read_state(canary), state_codec.dumps(state))
        state = dataclasses.replace(state, message="analysing step 1")
        kube.save_state(canary, created, state_codec.dumps(state))
        stored = kube.read_state(canary)
        assert stored.name == state_object_name(rollout.canary_name)
        assert state_codec.loads(str(stored.text)).phase == "progressing"
        with pytest.raises(StateConflict):
            kube.save_state(canary, created, state_codec.dumps(state))
        # ... and read back through the daemon's cache of the states (list and watch) ...
        states = StateCache(kube, [app_namespace])
        states.start()
        try:
            assert states.wait_synced(60)
            assert states.synced(app_namespace)  # listed, not found forbidden
            assert states.read_state(canary) == stored
        finally:
            states.stop()
        written = kube.label_phase(canary, "progressing")
        kube.set_command(app_namespace, rollout.canary_name, "pause")
        assert kube.consume_command(
            kube.read_deployment(app_namespace, rollout.canary_name), "pause"
        )
        kube.write_record(
            kube.read_deployment(app_namespace, rollout.stable), state_codec.dumps(state)
        )

        # ... an Event recorded, and the promotion: the stable gets the canary's template.
        # ... its pods read (crash loops, pull errors, restarts) ...
        canary_pods = kube.list_pods(app_namespace, written.selector)
        assert all(p["metadata"]["labels"]["track"] == "canary" for p in canary_pods)
        kube.record_event(written, "ReleaseDetected", "v2 on the canary", warning=False)
        events = client.CoreV1Api(kube_api).list_namespaced_event(
            app_namespace,
            field_selector=f"involvedObject.name={rollout.canary_name}",
            _request_timeout=_T,
        )
        ours = [
            e for e in events.items if e.source is not None and e.source.component == "autocanary"
        ]
        assert [(e.reason, e.reporting_instance) for e in ours] == [
            ("ReleaseDetected", "autocanary-a")
        ]
        promoted = kube.replace_template(
            app_namespace,
            rollout.stable,
            {**template, "metadata": {"labels": {**stable.template["metadata"]["labels"]}}},
        )
        assert promoted.template["metadata"]["labels"]["track"] == "stable"

        # Leader election in the daemon's namespace: create, renew, hold off, release, take over.
        election = config.daemon.leader_election
        a = LeaderElector(kube, election, namespace, "autocanary-a")
        b = LeaderElector(
            KubeClient(sa_b, identity="autocanary-b"), election, namespace, "autocanary-b"
        )
        assert a.try_acquire_or_renew()  # create
        assert a.try_acquire_or_renew()  # get + update
        assert not b.try_acquire_or_renew()  # get: held by a
        a.release()  # update: holder cleared
        assert b.try_acquire_or_renew()  # get + update: taken over
        lease = client.CoordinationV1Api(kube_api).read_namespaced_lease(
            election.lease_name, namespace, _request_timeout=_T
        )
        assert lease.spec is not None
        assert lease.spec.holder_identity == "autocanary-b"


def test_daemon_service_account_can_do_nothing_else(
    control_plane: ControlPlane,
    installed: tuple[Config, RolloutConfig],
    namespace: str,
    app_namespace: str,
    elsewhere: str,
) -> None:
    config, rollout = installed
    user = f"system:serviceaccount:{namespace}:autocanary"
    with control_plane.impersonating_client(user) as sa:
        kube = KubeClient(sa, identity="autocanary-a")
        apps, core = client.AppsV1Api(sa), client.CoreV1Api(sa)
        rbac = client.RbacAuthorizationV1Api(sa)
        namespace_body: Any = {"metadata": {"name": f"{namespace}-x"}}
        binding_body: Any = {
            "metadata": {"name": f"{namespace}-x"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "autocanary", "namespace": namespace}],
        }

        def readable() -> bool:
            try:
                kube.read_deployment(app_namespace, rollout.stable)
            except KubernetesForbidden:
                return False
            return True

        wait_until(readable, timeout=30, what="the RoleBindings effective")

        # Deployments: not in other namespaces, not other Deployments, no create or delete.
        forbidden: list[tuple[str, Callable[[], object]]] = [
            ("read elsewhere", lambda: kube.read_deployment(elsewhere, rollout.stable)),
            ("scale elsewhere", lambda: kube.scale(elsewhere, rollout.stable, 0)),
            ("read the probe", lambda: kube.read_deployment(app_namespace, "probe")),
            ("scale the probe", lambda: kube.scale(app_namespace, "probe", 0)),
            (
                "create a Deployment",
                lambda: kube.create_deployment(
                    app_namespace, {**kube_body(rollout), "metadata": {"name": "intruder"}}
                ),
            ),
            ("Lease in the app namespace", lambda: kube.read_lease(app_namespace, "autocanary")),
            (
                "another Lease",
                lambda: kube.read_lease(namespace, config.daemon.leader_election.lease_name + "-x"),
            ),
        ]
        allowed = [what for what, call in forbidden if not _is_forbidden(call)]
        assert allowed == []

        refused = {
            "delete the canary": lambda: apps.delete_namespaced_deployment(
                rollout.canary_name, app_namespace, _request_timeout=_T
            ),
            # Its cache lists and watches the app namespace's Deployments; nowhere else.
            "list Deployments elsewhere": lambda: apps.list_namespaced_deployment(
                elsewhere, _request_timeout=_T
            ),
            "read the Slack Secret": lambda: core.read_namespaced_secret(
                "autocanary-slack", namespace, _request_timeout=_T
            ),
            "list Secrets (app)": lambda: core.list_namespaced_secret(
                app_namespace, _request_timeout=_T
            ),
            "list ConfigMaps": lambda: core.list_namespaced_config_map(
                namespace, _request_timeout=_T
            ),
            # Only the state's ConfigMaps, by name (creating one cannot be limited by name).
            "read another ConfigMap": lambda: core.read_namespaced_config_map(
                "other", app_namespace, _request_timeout=_T
            ),
            "replace another ConfigMap": lambda: core.replace_namespaced_config_map(
                "other", app_namespace, {"metadata": {"name": "other"}}, _request_timeout=_T
            ),
            "delete the state's ConfigMap": lambda: core.delete_namespaced_config_map(
                state_object_name(rollout.canary_name), app_namespace, _request_timeout=_T
            ),
            "list Pods elsewhere": lambda: core.list_namespaced_pod(elsewhere, _request_timeout=_T),
            "delete Pods": lambda: core.delete_collection_namespaced_pod(
                app_namespace, _request_timeout=_T
            ),
            "read pod logs": lambda: core.read_namespaced_pod_log(
                "any", app_namespace, _request_timeout=_T
            ),
            "list Events": lambda: core.list_namespaced_event(app_namespace, _request_timeout=_T),
            "list Nodes": lambda: core.list_node(_request_timeout=_T),
            "list Namespaces": lambda: core.list_namespace(_request_timeout=_T),
            "create a Namespace": lambda: core.create_namespace(
                namespace_body, _request_timeout=_T
            ),
            "list ClusterRoles": lambda: rbac.list_cluster_role(_request_timeout=_T),
            "create a ClusterRoleBinding": lambda: rbac.create_cluster_role_binding(
                binding_body, _request_timeout=_T
            ),
            "escalate its Role": lambda: rbac.patch_namespaced_role(
                "autocanary", app_namespace, {"rules": []}, _request_timeout=_T
            ),
        }
        statuses = {what: status_of(call) for what, call in refused.items()}
        assert statuses == dict.fromkeys(refused, 403)

        # The API server's summary of the account's permissions: these and nothing more.
        names = {rollout.stable, rollout.canary_name}
        state = state_object_name(rollout.canary_name)
        assert rules_in(sa, app_namespace) == {
            ("apps", "deployments", verb, name) for verb in ("get", "patch") for name in names
        } | {
            ("", "events", "create", "*"),
            ("", "pods", "list", "*"),
            ("", "configmaps", "create", "*"),
            ("", "configmaps", "get", state),
            ("", "configmaps", "update", state),
            # The states' cache (deploy/rbac.yaml says what listing every ConfigMap grants).
            ("", "configmaps", "list", "*"),
            ("", "configmaps", "watch", "*"),
            ("", "pods", "watch", "*"),
            ("apps", "deployments", "list", "*"),
            ("apps", "deployments", "watch", "*"),
        }
        lease = config.daemon.leader_election.lease_name
        assert rules_in(sa, namespace) == {
            ("coordination.k8s.io", "leases", "create", "*"),
            ("coordination.k8s.io", "leases", "get", lease),
            ("coordination.k8s.io", "leases", "update", lease),
        }
        assert rules_in(sa, elsewhere) == set()


def test_probe_service_account_follows_the_service_and_may_do_nothing_else(
    control_plane: ControlPlane,
    installed: tuple[Config, RolloutConfig],
    namespace: str,
    app_namespace: str,
    elsewhere: str,
) -> None:
    _, rollout = installed
    probe = one(render(DEPLOY / "example"), "Deployment", "probe")
    pod = probe["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    target = container["args"][container["args"].index("--target") + 1]
    name, _, url = target.partition("=")
    assert name == rollout.name
    # The probe's own code, as the probe's ServiceAccount, on the Service moved here.
    ref = dataclasses.replace(ServiceRef.parse(url), namespace=app_namespace)
    user = f"system:serviceaccount:{app_namespace}:{pod['serviceAccountName']}"
    with control_plane.impersonating_client(user) as sa:
        follower = ServiceFollower(sa, ref, rollout.version_label)

        def followed() -> bool:
            follower.refresh()  # a refusal is logged and leaves no endpoints
            return len(follower.backends) == 3

        wait_until(followed, timeout=60, what="the probe following testpage's 3 endpoints")
        assert {b.version for b in follower.backends} == {"v1"}
        assert all(b.pod.startswith(f"{rollout.stable}-") for b in follower.backends)
        assert {b.port for b in follower.backends} == {8080}

        core = client.CoreV1Api(sa)
        refused = {
            "read a pod": lambda: core.read_namespaced_pod(
                follower.backends[0].pod, app_namespace, _request_timeout=_T
            ),
            "list Secrets": lambda: core.list_namespaced_secret(app_namespace, _request_timeout=_T),
            "list Pods elsewhere": lambda: core.list_namespaced_pod(elsewhere, _request_timeout=_T),
            "list Deployments": lambda: client.AppsV1Api(sa).list_namespaced_deployment(
                app_namespace, _request_timeout=_T
            ),
        }
        assert {what: status_of(call) for what, call in refused.items()} == dict.fromkeys(
            refused, 403
        )
        assert rules_in(sa, app_namespace) == {
            ("discovery.k8s.io", "endpointslices", "list", "*"),
            ("", "pods", "list", "*"),
        }
        assert rules_in(sa, namespace) == set()
        assert rules_in(sa, elsewhere) == set()


def _is_forbidden(call: Callable[[], object]) -> bool:
    try:
        call()
    except KubernetesForbidden:
        return True
    return False


def kube_body(rollout: RolloutConfig) -> dict[str, Any]:
    """A minimal valid Deployment body (its name is replaced by the caller)."""
    labels = {"app": "intruder"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": f"{rollout.name}:x"}]},
            },
        },
    }
