"""Rollouts declared on their stable Deployments, found by a running daemon without a restart.

The daemon starts with no rollout of its own and discovery on. A team then
labels and annotates its Deployment: the daemon picks the rollout up (an
Event says so) and releases it; another team's invalid declaration is told
as a Warning Event on that Deployment naming the problem and its line, while
the valid one runs on, and is picked up once fixed. The rounds read the
daemon's Deployment cache, not the API: with thousands of declarations, a
list of them all every round would be most of what an idle daemon costs.
The pods are KWOK's (Ready at once, nothing runs in
them): what is shown is discovery, so the check is a query Prometheus
answers without traffic.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import autocanary_events, daemon_sample, start_daemon
from kubernetes import client

from autocanary_testbed.controlplane import ControlPlane
from autocanary_testbed.monitoring import PrometheusServer
from autocanary_testbed.procs import ProcessGroup, free_port
from autocanary_testbed.stack import app_deployment
from autocanary_testbed.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

PrometheusFactory = Callable[..., PrometheusServer]
WAIT_S = 120.0  # a bound for a hang, not a timing expectation
LISTS = 'autocanary_kube_requests_total{call="list_namespaced_deployment"}'
LISTS_EVERYWHERE = 'autocanary_kube_requests_total{call="list_deployment_for_all_namespaces"}'


def _declared(name: str, version: str, annotation: str) -> Any:
    body: Any = app_deployment(name, name, "stable", version, replicas=2)
    body["metadata"]["labels"]["autocanary.io/rollout"] = "true"
    body["metadata"]["annotations"] = {"autocanary.io/rollout": annotation}
    return body


@pytest.mark.parametrize("everywhere", [False, True], ids=["namespaces-named", "every-namespace"])
def test_a_declared_rollout_is_found_without_a_restart_and_a_bad_one_is_told(
    everywhere: bool,
    control_plane: ControlPlane,
    kube_api: client.ApiClient,
    namespace: str,
    prometheus_factory: PrometheusFactory,
    group: ProcessGroup,
    tmp_workdir: Path,
) -> None:
    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)

    def reasons(name: str) -> list[str]:
        return [e["reason"] for e in autocanary_events(core, namespace, name)]

    if everywhere:
        # Declaration names are the cluster's: an earlier test's, its namespace still
        # being deleted, would be a clash.
        wait_until(
            lambda: (
                not [
                    d
                    for d in apps.list_deployment_for_all_namespaces(
                        label_selector="autocanary.io/rollout=true"
                    ).items
                    if d.metadata.namespace != namespace
                ]
            ),
            timeout=WAIT_S,
            what="no other namespace's declarations left",
        )
    prometheus = prometheus_factory([])
    port = free_port()
    config = {
        "prometheus": {"url": prometheus.url, "timeout": "3s"},
        "daemon": {"listen": f"127.0.0.1:{port}", "logFormat": "json"},
        "discovery": {
            "enabled": True,
            "namespaces": [] if everywhere else [namespace],
            "interval": "1s",
            "defaults": {
                "interval": "2s",
                "steps": [{"canary": 1, "hold": "2s"}, {"canary": "100%", "hold": "2s"}],
                "analysis": {
                    "warmup": "1s",
                    "window": "2s",
                    "minRequests": 0,
                    "checks": [{"name": "answers", "query": "vector(0)", "max": 1}],
                },
            },
        },
    }
    daemon = start_daemon(group, control_plane, tmp_workdir, config, port)
    started = time.monotonic()

    # Declared after the daemon started: a bad one (line 3 is wrong) and a good one.
    bad = "interval: 5s\nanalysis:\n  warmpu: 10s\n"
    apps.create_namespaced_deployment(namespace, _declared("cart", "v1", bad))
    good = json.dumps({"name": "web", "steps": [{"canary": 1, "hold": "2s"}]})
    apps.create_namespaced_deployment(namespace, _declared("web", "v1", good))
    canary: Any = app_deployment("web-canary", "web", "canary", "v1", replicas=0)
    apps.create_namespaced_deployment(namespace, canary)

    wait_until(
        lambda: "RolloutDeclared" in reasons("web"),
        timeout=WAIT_S,
        what="the declared rollout picked up",
    )
    wait_until(
        lambda: bool(autocanary_events(core, namespace, "cart")),
        timeout=WAIT_S,
        what="an Event about the invalid declaration",
    )
    [told] = autocanary_events(core, namespace, "cart")
    assert (told["type"], told["reason"]) == ("Warning", "InvalidRolloutDeclaration")
    assert (
        "Deployment "
        f"{namespace}/cart annotation autocanary.io/rollout:3: analysis.warmpu: "
        "unknown field 'warmpu' (did you mean 'warmup'?)"
    ) in told["message"], told["message"]

    # The valid one releases while the invalid one is skipped.
    canary = app_deployment("web-canary", "web", "canary", "v2", replicas=0)
    apps.patch_namespaced_deployment(
        "web-canary",
        namespace,
        [{"op": "replace", "path": "/spec/template", "value": canary["spec"]["template"]}],
    )

    def promoted() -> bool:
        return "Promoted" in reasons("web-canary")

    wait_until(promoted, timeout=WAIT_S, what="the declared rollout's release promoted")
    response: Any = apps.read_namespaced_deployment("web", namespace, _preload_content=False)
    stable = json.loads(response.data)
    assert stable["spec"]["template"]["metadata"]["labels"]["version"] == "v2"
    canary_told = reasons("web-canary")
    assert canary_told.count("ReleaseDetected") == 1, canary_told
    assert "RolledBack" not in canary_told, canary_told
    assert daemon.is_running()
    assert "RolloutDeclared" not in reasons("cart")

    # Fixed, it is picked up at a later round, without a restart.
    fixed = json.dumps({"interval": "5s", "analysis": {"warmup": "1s"}})
    apps.patch_namespaced_deployment(
        "cart", namespace, {"metadata": {"annotations": {"autocanary.io/rollout": fixed}}}
    )
    wait_until(
        lambda: "RolloutDeclared" in reasons("cart"),
        timeout=WAIT_S,
        what="the fixed declaration picked up",
    )
    # A round a second all along, and the namespace's Deployments listed once: the
    # cache's first list (a second one only if its watch expired, after 5 minutes).
    # Searching every namespace, the declarations too: one list and a watch of them.
    # At least ten rounds, or a quick run would prove nothing about them.
    time.sleep(max(0.0, 10 - (time.monotonic() - started)))
    rounds = time.monotonic() - started
    most = 1 if rounds < 290 else 2
    assert 1 <= daemon_sample(port, LISTS) <= most, daemon_sample(port, LISTS)
    everywhere_lists = daemon_sample(port, LISTS_EVERYWHERE)
    assert (1 <= everywhere_lists <= most) if everywhere else everywhere_lists == 0
