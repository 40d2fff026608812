"""The Helm chart (deploy/helm/autocanary), rendered by a real helm and applied to the
test bed's API server, then checked by impersonating the ServiceAccount it creates:
the RBAC derived from the config's rollouts grants what the daemon needs, and
nothing on Deployments it does not manage. helm is built by hack/setup.sh."""

from __future__ import annotations

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

from autocanary import startup
from autocanary.config_loader import parse_config
from autocanary.kube import DAEMON_SELECTOR, KubeClient
from autocanary.prometheus import PrometheusClient
from autocanary_testbed.controlplane import ControlPlane

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


@pytest.fixture
def release_namespace(control_plane: ControlPlane) -> Iterator[str]:
    name = f"helm-{uuid.uuid4().hex[:6]}"
    control_plane.create_namespace(name)
    yield name
    control_plane.delete_namespace(name)


def test_the_chart_lints_and_renders_the_default_values() -> None:
    run(helm(), "lint", str(CHART))
    objects = [d for d in yaml.safe_load_all(run(helm(), "template", "x", str(CHART))) if d]
    (config_map,) = [o for o in objects if o["kind"] == "ConfigMap"]
    parse_config(config_map["data"]["config.yaml"], "values.yaml config")


def test_the_chart_applies_and_its_rbac_is_what_the_daemon_needs(
    control_plane: ControlPlane, namespace: str, release_namespace: str, tmp_path: Path
) -> None:
    values = tmp_path / "config.yaml"
    values.write_text(config_text(namespace))
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
    assert [r.name for r in config.rollouts] == ["web", "api"]
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
    # ...and what it does not do is not.
    for access in (
        startup.Access("get", "deployments", "apps", namespace, "other"),
        startup.Access("patch", "deployments", "apps", namespace, "other-canary"),
        startup.Access("delete", "deployments", "apps", namespace, "web"),
        startup.Access("get", "secrets", "", release_namespace),
        startup.Access("update", "leases", "coordination.k8s.io", release_namespace, "autocanary"),
    ):
        assert not as_daemon.can_i(access), access
