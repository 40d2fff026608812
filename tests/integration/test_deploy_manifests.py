"""deploy/ rendered by kubectl's kustomize: what an SRE applies, checked against the daemon.

The config in the ConfigMap validates, the RBAC grants exactly the calls the
daemon makes for that config's rollouts, the Deployment is hardened and probed
where the daemon listens, the example app starts idle (canary revision equals
stable), and the alert rules pass promtool's check and unit tests.
Applying deploy/ to a real API server is tests/integration/test_deploy_rbac.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kustomize_render import (
    APP_NAMESPACE,
    DAEMON_NAMESPACE,
    DEPLOY,
    REPO,
    Obj,
    of_kind,
    one,
    render,
)

from autocanary.apps.probe_service import ServiceRef
from autocanary.config.loader import parse_config
from autocanary.config.models import Config, SlackSink
from autocanary.daemon.metrics import DaemonMetrics
from autocanary.rollout.revision import revision_of
from autocanary.rollout.state import state_object_name

pytestmark = pytest.mark.integration

AUTOCANARY = Path(sys.executable).parent / "autocanary"
RULES = DEPLOY / "prometheus" / "rules.yaml"


@pytest.fixture(scope="module")
def daemon_objects() -> list[Obj]:
    return render(DEPLOY)


@pytest.fixture(scope="module")
def example_objects() -> list[Obj]:
    return render(DEPLOY / "example")


@pytest.fixture(scope="module")
def prometheus_objects() -> list[Obj]:
    return render(DEPLOY / "prometheus")


@pytest.fixture(scope="module")
def config(daemon_objects: list[Obj]) -> Config:
    text = one(daemon_objects, "ConfigMap", "autocanary-config")["data"]["config.yaml"]
    return parse_config(text, "ConfigMap autocanary-config")


def _container(deployment: Obj) -> Obj:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _env(container: Obj) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# ---- what is in the render ------------------------------------------------------------------


def test_daemon_render_is_namespaced_and_holds_no_secret(daemon_objects: list[Obj]) -> None:
    kinds = sorted(o["kind"] for o in daemon_objects)
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Namespace",
        "PodDisruptionBudget",
        "Role",
        "Role",
        "RoleBinding",
        "RoleBinding",
        "ServiceAccount",
    ]
    for obj in daemon_objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] in (DAEMON_NAMESPACE, APP_NAMESPACE), obj
    for role in of_kind(daemon_objects, "Role"):
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(key, []), f"wildcard in Role {role['metadata']['name']}"


def test_configmap_is_the_config_from_config_dir_and_validates(
    daemon_objects: list[Obj], tmp_path: Path
) -> None:
    shipped = (DEPLOY / "config.yaml").read_text(encoding="utf-8")
    source = REPO / "config" / "testpage.yaml"
    assert shipped == source.read_text(encoding="utf-8"), (
        "deploy/config.yaml differs from config/testpage.yaml; kustomize reads no file outside "
        "deploy/, so copy it: cp config/testpage.yaml deploy/config.yaml"
    )
    configmap = one(daemon_objects, "ConfigMap", "autocanary-config")
    # A content hash in the name: a config change rolls the Deployment out.
    assert re.fullmatch(r"autocanary-config-[a-z0-9]{10}", configmap["metadata"]["name"])
    rendered = tmp_path / "config.yaml"
    rendered.write_text(configmap["data"]["config.yaml"], encoding="utf-8")
    result = subprocess.run(
        [str(AUTOCANARY), "validate", str(rendered)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{rendered}: valid" in result.stdout


# ---- the daemon Deployment ------------------------------------------------------------------


def test_daemon_runs_two_replicas_electing_a_leader(
    daemon_objects: list[Obj], config: Config
) -> None:
    deployment = one(daemon_objects, "Deployment", "autocanary")
    assert deployment["spec"]["replicas"] == 2
    assert config.daemon.leader_election.enabled
    assert config.daemon.leader_election.namespace is None  # so: $POD_NAMESPACE
    env = _env(_container(deployment))
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    pdb = one(daemon_objects, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_daemon_reads_the_mounted_configmap(daemon_objects: list[Obj]) -> None:
    deployment = one(daemon_objects, "Deployment", "autocanary")
    container = _container(deployment)
    assert container["args"][0] == "run"
    config_path = container["args"][container["args"].index("--config") + 1]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mount = next(
        m for m in container["volumeMounts"] if config_path.startswith(m["mountPath"] + "/")
    )
    assert mount.get("readOnly") is True
    configmap = one(daemon_objects, "ConfigMap", "autocanary-config")
    assert volumes[mount["name"]]["configMap"]["name"] == configmap["metadata"]["name"]
    assert config_path.removeprefix(mount["mountPath"] + "/") in configmap["data"]


def test_secrets_come_from_secret_references(daemon_objects: list[Obj], config: Config) -> None:
    env = _env(_container(one(daemon_objects, "Deployment", "autocanary")))
    from_env = [s.url.env for s in config.alerts.sinks if s.url.env is not None]
    assert any(isinstance(s, SlackSink) for s in config.alerts.sinks)
    assert "SLACK_WEBHOOK_URL" in from_env
    for name in from_env:
        assert set(env[name]) == {"secretKeyRef"}, f"{name} is not read from a Secret"
    assert of_kind(daemon_objects, "Secret") == []


def test_daemon_pod_is_hardened(daemon_objects: list[Obj]) -> None:
    deployment = one(daemon_objects, "Deployment", "autocanary")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "autocanary"
    _assert_restricted(pod)
    container = _container(deployment)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][kind].keys()


def test_probes_and_scraping_use_the_listen_port(daemon_objects: list[Obj], config: Config) -> None:
    deployment = one(daemon_objects, "Deployment", "autocanary")
    port = int(config.daemon.listen.rpartition(":")[2])
    container = _container(deployment)
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    paths = {}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert named.get(get["port"], get["port"]) == port
        paths[probe] = get["path"]
    assert paths == {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_images_carry_the_project_version(
    daemon_objects: list[Obj], example_objects: list[Obj]
) -> None:
    import tomllib

    with (REPO / "pyproject.toml").open("rb") as f:
        version = tomllib.load(f)["project"]["version"]
    for deployment in of_kind(daemon_objects + example_objects, "Deployment"):
        assert _container(deployment)["image"] == f"autocanary/autocanary:{version}"


# ---- RBAC against the config ----------------------------------------------------------------


def _rules_for(objects: list[Obj], namespace: str) -> list[Obj]:
    """The rules bound to the autocanary ServiceAccount in ``namespace``."""
    roles = {r["metadata"]["name"]: r for r in of_kind(objects, "Role")}
    rules = []
    for binding in of_kind(objects, "RoleBinding"):
        if binding["metadata"]["namespace"] != namespace:
            continue
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "autocanary", "namespace": DAEMON_NAMESPACE}
        ]
        role = roles[binding["roleRef"]["name"]]
        assert role["metadata"]["namespace"] == namespace
        rules += role["rules"]
    return rules


def _grants(rules: list[Obj]) -> set[tuple[str, str, str, str]]:
    """(apiGroup, resource, verb, resourceName or '*') for every rule."""
    return {
        (group, resource, verb, name)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
        for name in rule.get("resourceNames", ["*"])
    }


def test_rbac_grants_exactly_the_daemons_calls_for_the_configured_rollouts(
    daemon_objects: list[Obj], config: Config
) -> None:
    namespaces = {r.namespace for r in config.rollouts}
    assert namespaces == {APP_NAMESPACE}
    for namespace in namespaces:
        names = {
            name
            for r in config.rollouts
            if r.namespace == namespace
            for name in (r.stable, r.canary_name)
        }
        expected = {("apps", "deployments", verb, n) for verb in ("get", "patch") for n in names}
        expected |= {("", "events", "create", "*"), ("", "pods", "list", "*")}
        # The state's ConfigMaps: created (a create names nothing), then only they.
        expected |= {("", "configmaps", "create", "*")}
        expected |= {
            ("", "configmaps", verb, state_object_name(r.canary_name))
            for r in config.rollouts
            if r.namespace == namespace
            for verb in ("get", "update")
        }
        # The daemon's watch cache: list and watch, namespace-wide and read only.
        expected |= {
            (g, r, v, "*")
            for g, r in (("apps", "deployments"), ("", "pods"), ("", "configmaps"))
            for v in ("list", "watch")
        }
        assert _grants(_rules_for(daemon_objects, namespace)) == expected
    lease = config.daemon.leader_election.lease_name
    assert _grants(_rules_for(daemon_objects, DAEMON_NAMESPACE)) == {
        ("coordination.k8s.io", "leases", "create", "*"),
        ("coordination.k8s.io", "leases", "get", lease),
        ("coordination.k8s.io", "leases", "update", lease),
    }


# ---- the example app ------------------------------------------------------------------------


def test_example_app_starts_idle_behind_one_service(
    example_objects: list[Obj], config: Config
) -> None:
    (rollout,) = config.rollouts
    assert {o["metadata"].get("namespace") for o in example_objects} == {None, rollout.namespace}
    assert one(example_objects, "Namespace")["metadata"]["name"] == rollout.namespace
    stable = one(example_objects, "Deployment", rollout.stable)
    canary = one(example_objects, "Deployment", rollout.canary_name)
    assert (stable["spec"]["replicas"], canary["spec"]["replicas"]) == (3, 0)
    # Same revision on both sides (track is a role label): the daemon starts idle.
    templates = [d["spec"]["template"] for d in (stable, canary)]
    assert revision_of(templates[0], rollout.role_labels) == revision_of(
        templates[1], rollout.role_labels
    )
    for template in templates:
        assert rollout.version_label in template["metadata"]["labels"]
        env = _env(template["spec"]["containers"][0])
        assert env["VERSION"] == {
            "fieldRef": {"fieldPath": f"metadata.labels['{rollout.version_label}']"}
        }
    service = one(example_objects, "Service")
    assert service["spec"]["selector"] == {"app": "testpage"}
    for deployment in (stable, canary):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert stable["spec"]["selector"] != canary["spec"]["selector"]


def test_probe_loads_the_service_under_the_rollouts_name(
    example_objects: list[Obj], config: Config
) -> None:
    (rollout,) = config.rollouts
    assert rollout.analysis.source == "probe"  # built-ins select target="{{ rollout }}"
    probe = one(example_objects, "Deployment", "probe")
    args = _container(probe)["args"]
    assert args[0] == "probe"
    service = one(example_objects, "Service")
    name, ns = service["metadata"]["name"], service["metadata"]["namespace"]
    # It follows the Service (failures counted against the pod's version), on the
    # Service port's name, which its EndpointSlices give their port.
    (port_name,) = {p["name"] for p in service["spec"]["ports"]}
    target = f"{rollout.name}=service://{ns}/{name}:{port_name}/"
    assert args[args.index("--target") + 1] == target
    assert ServiceRef.parse(target.partition("=")[2]).namespace == rollout.namespace
    port = args[args.index("--metrics-port") + 1]
    annotations = probe["spec"]["template"]["metadata"]["annotations"]
    assert (annotations["prometheus.io/scrape"], annotations["prometheus.io/port"]) == (
        "true",
        port,
    )


def test_example_pods_are_hardened(example_objects: list[Obj]) -> None:
    for deployment in of_kind(example_objects, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        _assert_restricted(pod)
        # Only the probe holds credentials: it reads the Service's endpoints.
        is_probe = deployment["metadata"]["name"] == "probe"
        assert pod["automountServiceAccountToken"] is is_probe
        assert pod.get("serviceAccountName") == ("probe" if is_probe else None)
        assert _container(deployment)["securityContext"]["readOnlyRootFilesystem"] is True


def test_probe_role_grants_only_listing_endpointslices_and_pods(
    example_objects: list[Obj],
) -> None:
    # What ServiceFollower.refresh calls: list_namespaced_endpoint_slice, list_namespaced_pod.
    role = one(example_objects, "Role", "probe")
    assert role["rules"] == [
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    ]
    binding = one(example_objects, "RoleBinding", "probe")
    assert binding["roleRef"]["name"] == "probe"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "probe", "namespace": APP_NAMESPACE}
    ]
    assert one(example_objects, "ServiceAccount", "probe")["metadata"]["namespace"] == APP_NAMESPACE


def _assert_restricted(pod: Obj) -> None:
    """The Pod Security Standard "restricted", as far as these manifests go."""
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 10001
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}


# ---- alert rules ----------------------------------------------------------------------------


def _promtool(*args: str) -> str:
    result = subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout


def test_rules_pass_promtool_check_and_unit_tests() -> None:
    assert "SUCCESS: 6 rules found" in _promtool("check", "rules", str(RULES))
    assert "SUCCESS" in _promtool("test", "rules", str(RULES.with_name("rules_test.yaml")))


def test_prometheusrule_carries_the_rules_file(
    prometheus_objects: list[Obj], tmp_path: Path
) -> None:
    rule = one(prometheus_objects, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == DAEMON_NAMESPACE
    assert rule["spec"] == yaml.safe_load(RULES.read_text(encoding="utf-8")), (
        "deploy/prometheus/prometheusrule.yaml and rules.yaml differ: edit both"
    )
    extracted = tmp_path / "from-prometheusrule.yaml"
    extracted.write_text(yaml.safe_dump(rule["spec"]), encoding="utf-8")
    _promtool("check", "rules", str(extracted))
    monitor = one(prometheus_objects, "PodMonitor", "autocanary")
    daemon = render(DEPLOY)
    deployment = one(daemon, "Deployment", "autocanary")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"] for p in _container(deployment)["ports"]}
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= ports


def test_rules_use_only_metrics_the_daemon_exports() -> None:
    exported = set()
    for family in DaemonMetrics().registry.collect():
        suffixes = {
            "counter": ["_total"],
            "gauge": [""],
            "histogram": ["_bucket", "_sum", "_count"],
        }[family.type]
        exported |= {family.name + s for s in suffixes}
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    used = {
        name
        for group in rules["groups"]
        for rule in group["rules"]
        for name in re.findall(r"\bautocanary_\w+", rule["expr"])
    }
    assert used, "no autocanary metric in the rules"
    assert used <= exported, f"not exported by the daemon: {sorted(used - exported)}"
