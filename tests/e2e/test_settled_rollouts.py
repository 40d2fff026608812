"""A rollout with no release in flight is read at its resync, and woken by its Deployments' watch.

Ten thousand settled rollouts each ticking every interval were most of what an
idle daemon cost. Settled, this rollout (interval 2s) is read again only at
``daemon.settledResync`` (as shipped, 5m), yet what its ticks would decide is
decided once its Deployments change: a release starts, and a canary that a
GitOps sync scales up after the release is scaled back to 0. Each wait below
is shorter than the resync, so only the watch can have woken the rollout. The
pods are KWOK's; the check is a query Prometheus answers without traffic.
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
WAIT_S = 120.0  # less than the 5m resync: a rollout woken within it was woken by the watch
TICKS = "autocanary_tick_duration_seconds_count"
IDLE_S = 20.0  # ten intervals


def test_a_settled_rollout_ticks_at_its_resync_and_wakes_when_its_deployments_change(
    control_plane: ControlPlane,
    kube_api: client.ApiClient,
    namespace: str,
    prometheus_factory: PrometheusFactory,
    group: ProcessGroup,
    tmp_workdir: Path,
) -> None:
    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
    for name, track, replicas in (("web", "stable", 2), ("web-canary", "canary", 0)):
        body: Any = app_deployment(name, "web", track, "v1", replicas=replicas)
        apps.create_namespaced_deployment(namespace, body)
    prometheus = prometheus_factory([])
    port = free_port()
    config = {
        "prometheus": {"url": prometheus.url, "timeout": "3s"},
        "daemon": {"listen": f"127.0.0.1:{port}", "logFormat": "json"},
        "rollouts": [
            {
                "name": "web",
                "namespace": namespace,
                "stable": "web",
                "interval": "2s",
                "steps": [{"canary": 1, "hold": "2s"}],
                "analysis": {
                    "warmup": "1s",
                    "window": "2s",
                    "minRequests": 0,
                    "checks": [{"name": "answers", "query": "vector(0)", "max": 1}],
                },
            }
        ],
    }
    daemon = start_daemon(group, control_plane, tmp_workdir, config, port)

    def reasons() -> list[str]:
        return [e["reason"] for e in autocanary_events(core, namespace, "web-canary")]

    def canary() -> dict[str, Any]:
        response: Any = apps.read_namespaced_deployment(
            "web-canary", namespace, _preload_content=False
        )
        found: dict[str, Any] = json.loads(response.data)
        return found

    # Settled from its first tick: over ten intervals it is not read again.
    wait_until(lambda: daemon_sample(port, TICKS) >= 1, timeout=WAIT_S, what="the first tick")
    before = daemon_sample(port, TICKS)
    time.sleep(IDLE_S)
    idle_ticks = daemon_sample(port, TICKS) - before
    assert idle_ticks <= 1, f"{idle_ticks} ticks in {IDLE_S:g}s settled (interval 2s)"

    # A release wakes it, and it ticks every interval while the release runs.
    new: Any = app_deployment("web-canary", "web", "canary", "v2", replicas=0)
    apps.patch_namespaced_deployment(
        "web-canary",
        namespace,
        [{"op": "replace", "path": "/spec/template", "value": new["spec"]["template"]}],
    )
    wait_until(lambda: "Promoted" in reasons(), timeout=WAIT_S, what="the release promoted")
    assert reasons().count("ReleaseDetected") == 1, reasons()
    wait_until(lambda: canary()["spec"]["replicas"] == 0, timeout=WAIT_S, what="canary at 0")

    # A sync that scales the finished canary up again is undone without waiting for the resync.
    apps.patch_namespaced_deployment("web-canary", namespace, {"spec": {"replicas": 2}})
    wait_until(
        lambda: canary()["spec"]["replicas"] == 0,
        timeout=WAIT_S,
        what="the canary scaled back to 0 by the daemon",
    )
    assert reasons().count("ReleaseDetected") == 1, reasons()
    assert daemon.is_running()
