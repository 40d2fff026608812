"""Start-up checks against the real API server: what the daemon lacks is named, up front.

The daemon's identity is a ServiceAccount impersonated on the test bed's API
server, with a Role that grants only part of what its config needs; the
SelfSubjectAccessReviews are answered by the real RBAC authorizer.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from autocanary.adapters.kubernetes import KubeClient
from autocanary.adapters.prometheus import PrometheusClient
from autocanary.config.loader import parse_config
from autocanary.daemon import startup
from autocanary.daemon.metrics import DaemonMetrics
from autocanary.daemon.service import Daemon
from autocanary.rollout.state import state_object_name
from autocanary_testbed.controlplane import ControlPlane
from autocanary_testbed.waiting import wait_until

pytestmark = pytest.mark.integration

SA = "checker"


def config_text(namespace: str, prometheus: str) -> str:
    return f"""\
prometheus:
  url: {prometheus}
  timeout: 2s
alerts:
  sinks:
    - {{name: pager, type: webhook, url: {{env: AUTOCANARY_TEST_UNSET_URL}}}}
    - {{name: chat, type: webhook, url: 'http://127.0.0.1:9/hook'}}
daemon:
  leaderElection: {{leaseName: autocanary, namespace: {namespace}}}
rollouts:
  - name: web
    namespace: {namespace}
    stable: web
    analysis:
      checks: [{{name: errors, template: error-rate, max: 1%}}]
"""


def _grant(api: client.ApiClient, namespace: str, rules: list[dict[str, Any]]) -> None:
    rbac = client.RbacAuthorizationV1Api(api)
    rbac.create_namespaced_role(namespace, {"metadata": {"name": SA}, "rules": rules})
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": SA},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SA},
            "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": namespace}],
        },
    )


def test_every_missing_requirement_is_named(control_plane: ControlPlane, namespace: str) -> None:
    admin = control_plane.api_client()
    # Get and patch on the stable only: the canary, and the Lease, are forgotten.
    _grant(
        admin,
        namespace,
        [
            {
                "apiGroups": ["apps"],
                "resources": ["deployments"],
                "resourceNames": ["web"],
                "verbs": ["get", "patch"],
            },
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": [state_object_name("web-canary")],
                "verbs": ["get", "update"],
            },
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        ],
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    config = parse_config(config_text(namespace, f"http://127.0.0.1:{closed}"))
    kube = KubeClient(
        control_plane.impersonating_client(
            f"system:serviceaccount:{namespace}:{SA}",
            ["system:serviceaccounts", "system:authenticated"],
        ),
        identity="checker",
    )
    prometheus = PrometheusClient(config.prometheus)
    try:
        missing = startup.check(config, kube, prometheus, lease_namespace=namespace)
    finally:
        prometheus.close()

    found = {(m.requirement, m.rollout, m.subject) for m in missing}
    assert found == {
        ("alertSecret", "", "pager"),
        ("prometheus", "", f"http://127.0.0.1:{closed}"),
        ("rbac", "web", f"get deployments.apps {namespace}/web-canary"),
        ("rbac", "web", f"patch deployments.apps {namespace}/web-canary"),
        ("rbac", "", f"create leases.coordination.k8s.io {namespace}"),
        ("rbac", "", f"get leases.coordination.k8s.io {namespace}/autocanary"),
        ("rbac", "", f"update leases.coordination.k8s.io {namespace}/autocanary"),
    }
    messages = {m.subject: m.message for m in missing}
    assert messages["pager"] == (
        "alert sink 'pager' has no URL: environment variable AUTOCANARY_TEST_UNSET_URL is not set "
        "or empty; its alerts will be dropped"
    )
    assert (
        f"cannot reach Prometheus at http://127.0.0.1:{closed}"
        in messages[f"http://127.0.0.1:{closed}"]
    )
    assert messages[f"patch deployments.apps {namespace}/web-canary"] == (
        f"forbidden: patch deployments.apps {namespace}/web-canary (needed by rollout 'web'); "
        "grant it in the daemon's Role (deploy/rbac.yaml)"
    )

    # Everything granted: nothing RBAC is said missing (the secret and Prometheus still are).
    admin_kube = KubeClient(admin, identity="admin")
    prometheus = PrometheusClient(config.prometheus)
    try:
        rest = startup.check(config, admin_kube, prometheus, lease_namespace=namespace)
    finally:
        prometheus.close()
    assert {m.requirement for m in rest} == {"alertSecret", "prometheus"}

    # The daemon says the same as a metric, in the background of its start.
    daemon = Daemon(Path("unused.yaml"), config, kube, identity="checker")
    try:
        daemon._check_requirements(config)  # what run() and reload() call
        wait_until(
            lambda: _missing_metric(daemon.metrics) == dict.fromkeys(found, 1.0),
            timeout=60,
            what="autocanary_requirement_missing for each missing requirement",
        )
    finally:  # never started: only what the constructor opened
        daemon._notifier.close(timeout=5)
        daemon._prometheus.close()


def _missing_metric(metrics: DaemonMetrics) -> dict[tuple[str, str, str], float]:
    return {
        (s.labels["requirement"], s.labels["rollout"], s.labels["subject"]): s.value
        for family in metrics.registry.collect()
        if family.name == "autocanary_requirement_missing"
        for s in family.samples
    }
