"""The Helm chart (deploy/helm/autocanary), rendered by a real helm and applied to the
test bed's API server, then checked by impersonating the ServiceAccount it creates:
the RBAC derived from the config's rollouts grants what the daemon needs, and
nothing on Deployments it does not manage. The chart is also installed, upgraded
and uninstalled with ``helm`` itself, as a team installing with Helm does. helm is
built by hack/setup.sh."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kustomize_render import REPO, kubectl

from autocanary.adapters.kubernetes import DAEMON_SELECTOR, Access, KubeClient
from autocanary.adapters.prometheus import PrometheusClient
from autocanary.adapters.shards import ShardManager
from autocanary.config.loader import parse_config
from autocanary.daemon import startup
from autocanary.daemon.discovery import Discovery
from autocanary.rollout.state import state_object_name
from autocanary_testbed.controlplane import ControlPlane
from autocanary_testbed.waiting import wait_until

pytestmark = pytest.mark.integration

CHART = REPO / "deploy" / "helm" / "autocanary"
HELM_VERSION = "v3.19.0"


def helm() -> str:
    cache = Path(
        os.environ.get("AUTOCANARY_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "autocanary"
    )
    path = cache / "helm" / HELM_VERSION / "helm"
    if not path.exists():
        pytest.fail(f"no helm at {path}: run hack/setup.sh (it builds helm {HELM_VERSION})")
    return str(path)


def run(*argv: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"{' '.join(argv[:3])} failed:\n{result.stdout}{result.stderr}"
    return result.stdout


def config_text(namespace: str) -> str:
    return f"""\
prometheus:
  url: http://127.0.0.1:9
daemon:
  leaderElection: {{enabled: true, leaseName: canary-lease}}
rollouts:
  - name: web
    namespace: {namespace}
    stable: web
    analysis:
      checks: [{{name: errors, template: error-rate, max: 1%}}]
  - name: api
    namespace: {namespace}
    stable: api
    canary: api-next
    analysis:
      checks: [{{name: errors, template: error-rate, max: 1%}}]
"""


def blue_green_rollout(namespace: str) -> str:
    """A blue/green rollout to append to :func:`config_text`: it switches two Services."""
    return f"""\
  - name: shop
    namespace: {namespace}
    stable: shop
    strategy: blueGreen
    blueGreen: {{activeService: shop, previewService: shop-preview}}
    analysis:
      checks: [{{name: errors, template: error-rate, max: 1%}}]
"""


def gateway_rollout(namespace: str, route_namespace: str) -> str:
    """A gateway rollout to append to :func:`config_text`: it sets the weights of one HTTPRoute."""
    return f"""\
  - name: store
    namespace: {namespace}
    stable: store
    strategy: gateway
    gateway:
      httpRoute: store
      namespace: {route_namespace}
      stableService: store-stable
      canaryService: store-canary
    steps: [{{canary: 5%}}, {{canary: 50%}}]
    analysis:
      source: gateway
      checks: [{{name: errors, template: error-rate, max: 1%}}]
"""


@pytest.fixture
def release_namespace(control_plane: ControlPlane) -> Iterator[str]:
    name = f"helm-{uuid.uuid4().hex[:6]}"
    control_plane.create_namespace(name)
    yield name
    control_plane.delete_namespace(name)


@pytest.fixture
def route_namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A namespace of its own for a gateway rollout's HTTPRoute: its Role goes there."""
    name = f"routes-{uuid.uuid4().hex[:6]}"
    control_plane.create_namespace(name)
    yield name
    control_plane.delete_namespace(name)


def test_the_chart_lints_and_renders_the_default_values() -> None:
    run(helm(), "lint", str(CHART))
    objects = [d for d in yaml.safe_load_all(run(helm(), "template", "x", str(CHART))) if d]
    (config_map,) = [o for o in objects if o["kind"] == "ConfigMap"]
    parse_config(config_map["data"]["config.yaml"], "values.yaml config")
    # The states' cache lists every ConfigMap of a rollout namespace: on by default,
    # and rbac.cacheStates=false takes it away (the daemon then reads each state by name).
    without = run(helm(), "template", "x", str(CHART), "--set", "rbac.cacheStates=false")
    assert _lists_configmaps(objects)
    assert not _lists_configmaps([d for d in yaml.safe_load_all(without) if d])


def _lists_configmaps(objects: list[dict[str, Any]]) -> bool:
    return any(
        "list" in rule["verbs"] and "configmaps" in rule["resources"]
        for o in objects
        if o["kind"] == "Role"
        for rule in o["rules"]
    )


def test_the_chart_applies_and_its_rbac_is_what_the_daemon_needs(
    control_plane: ControlPlane,
    namespace: str,
    release_namespace: str,
    route_namespace: str,
    tmp_path: Path,
) -> None:
    values = tmp_path / "config.yaml"
    values.write_text(
        config_text(namespace)
        + blue_green_rollout(namespace)
        + gateway_rollout(namespace, route_namespace)
    )
    rendered = run(
        helm(),
        "template",
        "autocanary",
        str(CHART),
        "--namespace",
        release_namespace,
        "--set-file",
        f"config={values}",
    )
    objects: list[dict[str, Any]] = [d for d in yaml.safe_load_all(rendered) if d]
    assert not [o for o in objects if o["kind"].startswith("Cluster")], "nothing cluster-scoped"
    run(
        kubectl(),
        "--kubeconfig",
        str(control_plane.kubeconfig_path),
        "apply",
        "-f",
        "-",
        stdin=rendered,
    )

    # The CLI finds the chart's daemon and its config, as it finds deploy/'s.
    kube = KubeClient(control_plane.api_client(), identity="test")
    text, _ = kube.daemon_config(release_namespace)
    config = parse_config(text, "chart ConfigMap")
    assert [r.name for r in config.rollouts] == ["web", "api", "shop", "store"]
    labels = dict(pair.split("=") for pair in DAEMON_SELECTOR.split(","))
    deployment = client.AppsV1Api(control_plane.api_client()).read_namespaced_deployment(
        "autocanary", release_namespace
    )
    assert labels.items() <= (deployment.metadata.labels or {}).items()

    # As the chart's ServiceAccount: everything the daemon needs is allowed...
    as_daemon = KubeClient(
        control_plane.impersonating_client(
            f"system:serviceaccount:{release_namespace}:autocanary",
            ["system:serviceaccounts", "system:authenticated"],
        ),
        identity="autocanary",
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    prometheus = PrometheusClient(
        config.prometheus.model_copy(update={"url": f"http://127.0.0.1:{closed}"})
    )
    try:
        missing = startup.check(config, as_daemon, prometheus, lease_namespace=release_namespace)
    finally:
        prometheus.close()
    assert [m for m in missing if m.requirement == "rbac"] == []
    # The states' cache (rbac.cacheStates, on by default) lists and watches ConfigMaps.
    for verb in ("list", "watch"):
        assert as_daemon.can_i(Access(verb, "configmaps", "", namespace)), verb
    for verb in ("get", "patch"):
        route = Access(verb, "httproutes", "gateway.networking.k8s.io", route_namespace, "store")
        assert as_daemon.can_i(route), route
    # ...and what it does not do is not.
    for access in (
        Access("get", "deployments", "apps", namespace, "other"),
        Access("patch", "deployments", "apps", namespace, "other-canary"),
        Access("delete", "deployments", "apps", namespace, "web"),
        Access("get", "secrets", "", release_namespace),
        # Blue/green's two Services only, and nothing but reading and switching them.
        Access("patch", "services", "", namespace, "web"),
        Access("delete", "services", "", namespace, "shop"),
        Access("create", "services", "", namespace),
        # The gateway rollout's HTTPRoute only, in its own namespace, get and patch only.
        Access("patch", "httproutes", "gateway.networking.k8s.io", route_namespace, "other"),
        Access("get", "httproutes", "gateway.networking.k8s.io", namespace, "store"),
        Access("delete", "httproutes", "gateway.networking.k8s.io", route_namespace, "store"),
        Access("update", "httproutes", "gateway.networking.k8s.io", route_namespace, "store"),
        Access("create", "httproutes", "gateway.networking.k8s.io", route_namespace),
        Access("patch", "gateways", "gateway.networking.k8s.io", route_namespace, "store"),
        Access("update", "leases", "coordination.k8s.io", release_namespace, "autocanary"),
        # The rollouts' state ConfigMaps only, and only read and replaced.
        Access("get", "configmaps", "", namespace, "other"),
        Access("update", "configmaps", "", namespace, "other"),
        Access("delete", "configmaps", "", namespace, state_object_name("web-canary")),
        Access("patch", "configmaps", "", namespace, state_object_name("web-canary")),
    ):
        assert not as_daemon.can_i(access), access


def test_with_shards_and_discovery_the_chart_grants_leases_and_the_served_namespaces(
    control_plane: ControlPlane, namespace: str, release_namespace: str, tmp_path: Path
) -> None:
    values = tmp_path / "config.yaml"
    values.write_text(
        "prometheus: {url: 'http://127.0.0.1:9'}\n"
        "daemon: {leaderElection: {enabled: true, leaseName: fleet, shards: 4}}\n"
        f"discovery: {{enabled: true, namespaces: [{namespace}], defaults: "
        "{analysis: {checks: [{name: errors, template: error-rate, max: 1%}]}}}\n"
    )
    rendered = run(
        helm(),
        "template",
        "autocanary",
        str(CHART),
        "--namespace",
        release_namespace,
        "--set-file",
        f"config={values}",
    )
    objects: list[dict[str, Any]] = [d for d in yaml.safe_load_all(rendered) if d]
    assert not [o for o in objects if o["kind"].startswith("Cluster")], "nothing cluster-scoped"
    run(
        kubectl(),
        "--kubeconfig",
        str(control_plane.kubeconfig_path),
        "apply",
        "-f",
        "-",
        stdin=rendered,
    )
    config = parse_config(values.read_text(), "values")
    as_daemon = KubeClient(
        control_plane.impersonating_client(
            f"system:serviceaccount:{release_namespace}:autocanary",
            ["system:serviceaccounts", "system:authenticated"],
        ),
        identity="autocanary-0",
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    prometheus = PrometheusClient(
        config.prometheus.model_copy(update={"url": f"http://127.0.0.1:{closed}"})
    )
    try:
        missing = startup.check(config, as_daemon, prometheus, lease_namespace=release_namespace)
    finally:
        prometheus.close()
    assert [m for m in missing if m.requirement == "rbac"] == []

    # What the daemon does with them works as its ServiceAccount: a shard round
    # (presence Lease created, shard Leases listed and taken), a graceful leave
    # (released, presence Lease deleted), and a discovery round in the namespace served.
    shards = ShardManager(
        as_daemon, config.daemon.leader_election, release_namespace, "autocanary-0"
    )
    shards.run_round()
    assert shards.acting() == [0, 1, 2, 3]
    shards.stop(release=True)
    assert shards.acting() == []
    assert Discovery(as_daemon, may_tell=lambda ns, name: True).find(config) == []
    for verb in ("list", "watch"):  # the daemon's caches, declared rollouts' states too
        for resource, group in (("deployments", "apps"), ("pods", ""), ("configmaps", "")):
            assert as_daemon.can_i(Access(verb, resource, group, namespace)), (verb, resource)
    for access in (
        Access("list", "deployments", "apps", release_namespace),
        Access("delete", "deployments", "apps", namespace, "web"),
        Access("list", "leases", "coordination.k8s.io", namespace),
        Access("get", "secrets", "", namespace),
    ):
        assert not as_daemon.can_i(access), access


def _daemon_objects(
    api: client.ApiClient, release_namespace: str, app_namespaces: list[str]
) -> set[str]:
    """kind/namespace/name of every object the chart makes that is there now."""
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    rbac, policy = client.RbacAuthorizationV1Api(api), client.PolicyV1Api(api)
    found: set[str] = set()
    listings: list[tuple[str, str, Any]] = [
        ("Deployment", release_namespace, apps.list_namespaced_deployment),
        ("ConfigMap", release_namespace, core.list_namespaced_config_map),
        ("ServiceAccount", release_namespace, core.list_namespaced_service_account),
        ("PodDisruptionBudget", release_namespace, policy.list_namespaced_pod_disruption_budget),
    ]
    for ns in [release_namespace, *app_namespaces]:
        listings += [
            ("Role", ns, rbac.list_namespaced_role),
            ("RoleBinding", ns, rbac.list_namespaced_role_binding),
        ]
    for kind, ns, call in listings:
        for item in call(ns, label_selector="app.kubernetes.io/instance=autocanary").items:
            found.add(f"{kind}/{ns}/{item.metadata.name}")
    return found


def _raw(call: Any, *args: str) -> Any:
    """An API object as the server sent it (plain JSON)."""
    return json.loads(call(*args, _preload_content=False, _request_timeout=10).data)


def _managed(rbac: client.RbacAuthorizationV1Api, namespace: str) -> list[str]:
    """The Deployments the chart's Role in ``namespace`` lets the daemon get and patch."""
    role = _raw(rbac.read_namespaced_role, "autocanary", namespace)
    (deployments,) = [
        r for r in role["rules"] if r["resources"] == ["deployments"] and "patch" in r["verbs"]
    ]
    return sorted(deployments["resourceNames"])


def test_helm_install_upgrade_and_uninstall_on_the_api_server(
    control_plane: ControlPlane, namespace: str, release_namespace: str, tmp_path: Path
) -> None:
    other = f"{release_namespace}-b"
    control_plane.create_namespace(other)
    try:
        _install_upgrade_uninstall(control_plane, namespace, other, release_namespace, tmp_path)
    finally:
        control_plane.delete_namespace(other)


def _install_upgrade_uninstall(
    control_plane: ControlPlane, app: str, other: str, release: str, tmp_path: Path
) -> None:
    # helm keeps its own cache and config; this run's live in tmp_path.
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(tmp_path / "helm-cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "helm-config"),
        "HELM_DATA_HOME": str(tmp_path / "helm-data"),
    }

    def helm_run(*args: str) -> str:
        argv = [helm(), *args, "--kubeconfig", str(control_plane.kubeconfig_path), "-n", release]
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=180, check=False, env=env
        )
        assert result.returncode == 0, f"helm {args[0]} failed:\n{result.stdout}{result.stderr}"
        return result.stdout

    api = control_plane.api_client()
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    rbac = client.RbacAuthorizationV1Api(api)
    first = tmp_path / "first.yaml"
    first.write_text(config_text(app))
    helm_run("install", "autocanary", str(CHART), "--set-file", f"config={first}")

    leader_objects = {
        f"Role/{release}/autocanary-leader-election",
        f"RoleBinding/{release}/autocanary-leader-election",
    }
    daemon_objects = {
        f"Deployment/{release}/autocanary",
        f"ConfigMap/{release}/autocanary-config",
        f"ServiceAccount/{release}/autocanary",
        f"PodDisruptionBudget/{release}/autocanary",
    }
    installed = _daemon_objects(api, release, [app, other])
    assert installed == daemon_objects | leader_objects | {
        f"Role/{app}/autocanary",
        f"RoleBinding/{app}/autocanary",
    }
    config_map = _raw(core.read_namespaced_config_map, "autocanary-config", release)
    assert config_map["data"] == {"config.yaml": first.read_text()}
    deployment = _raw(apps.read_namespaced_deployment, "autocanary", release)
    assert deployment["spec"]["replicas"] == 2
    checksum = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert _managed(rbac, app) == ["api", "api-next", "web", "web-canary"]

    # An upgrade: rollout api gone, rollout shop added in another namespace, three replicas.
    second = tmp_path / "second.yaml"
    second.write_text(
        config_text(app).split("  - name: api")[0]
        + f"""\
  - name: shop
    namespace: {other}
    stable: shop
    analysis:
      checks: [{{name: errors, template: error-rate, max: 2%}}]
"""
    )
    parse_config(second.read_text(), "second config")  # valid, so the change is the point
    helm_run(
        "upgrade", "autocanary", str(CHART), "--set-file", f"config={second}", "--set", "replicas=3"
    )

    config_map = _raw(core.read_namespaced_config_map, "autocanary-config", release)
    assert config_map["data"] == {"config.yaml": second.read_text()}
    deployment = _raw(apps.read_namespaced_deployment, "autocanary", release)
    assert deployment["spec"]["replicas"] == 3
    # A new config rolls the daemon's pods (its template's checksum changed).
    assert deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"] != checksum
    assert _managed(rbac, app) == ["web", "web-canary"]
    assert _managed(rbac, other) == ["shop", "shop-canary"]
    assert _daemon_objects(api, release, [app, other]) == installed | {
        f"Role/{other}/autocanary",
        f"RoleBinding/{other}/autocanary",
    }
    history = yaml.safe_load(helm_run("history", "autocanary", "-o", "yaml"))
    assert [(h["revision"], h["status"]) for h in history] == [(1, "superseded"), (2, "deployed")]

    helm_run("uninstall", "autocanary")
    # Deleted objects with dependents (the Deployment's ReplicaSets) may linger a moment.
    wait_until(
        lambda: _daemon_objects(api, release, [app, other]) == set(),
        timeout=30,
        what="every object of the chart removed",
    )
    releases = core.list_namespaced_secret(release, label_selector="owner=helm").items
    assert releases == []
