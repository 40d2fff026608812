"""Argo Rollouts on the test bed, the harness of bench/versus_argo.py: one bad release rolled back.

Its controller runs as a process against the bed's API server (its CRDs
installed), and a Rollout of the demo app judges its canary with an
AnalysisTemplate on the bed's Prometheus, which discovers the pods. A canary
answering half its requests with 500 must be aborted by the analysis and
scaled to 0, the stable's pods serving alone again.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from autocanary_testbed import argo
from autocanary_testbed.controlplane import ControlPlane
from autocanary_testbed.stack import CanaryStack, StackSettings, app_service
from autocanary_testbed.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.argo_rollouts]

APP = "testpage"
VERSION = 'target="testpage",version="{{args.version}}"'


@pytest.fixture
def argo_stack(
    control_plane: ControlPlane, argo_rollouts: Path, tmp_workdir: Path
) -> Iterator[CanaryStack]:
    """The demo app as a Rollout (3 pods), its traffic and Prometheus, Argo's controller on it."""
    namespace = f"argo-{uuid.uuid4().hex[:8]}"
    controller, _ = argo.start_controller(
        argo_rollouts, control_plane.kubeconfig_path, namespace, tmp_workdir / "logs"
    )
    rollout = argo.rollout(
        APP,
        "v1",
        replicas=3,
        steps=({"setWeight": 34}, {"pause": {"duration": "10m"}}),
    )
    stack = CanaryStack(
        control_plane,
        tmp_workdir / namespace,
        StackSettings(namespace=namespace, app=APP, app_objects=(app_service(APP), rollout)),
    )
    try:
        stack.start(daemon=False)
        yield stack
    finally:
        stack.stop()
        controller.stop()


def test_a_canary_failing_its_analysis_is_aborted_and_scaled_to_zero(
    argo_stack: CanaryStack,
) -> None:
    stack = argo_stack
    rollout = argo.ArgoRollout(stack.api, stack.namespace, APP)
    query = (
        f'(sum(rate(probe_requests_total{{{VERSION},code=~"5.."}}[20s])) or vector(0))'
        f" / sum(rate(probe_requests_total{{{VERSION}}}[20s]))"
    )
    template = argo.analysis_template(
        "error-rate",
        [
            {
                "name": "error-rate",
                "initialDelay": "10s",
                "interval": "5s",
                "successCondition": "result[0] <= 0.1",
                "failureLimit": 1,
                "provider": {"prometheus": {"address": stack.prometheus.url, "query": query}},
            }
        ],
    )
    template["metadata"]["namespace"] = stack.namespace
    rollout.custom.create_namespaced_custom_object(
        argo.GROUP, argo.API_VERSION, stack.namespace, "analysistemplates", template
    )

    rollout.release("v2", "error-rate", env={"FAULT_ERROR_RATE": "0.5"}, starting_step=1)
    wait_until(
        lambda: stack.served_versions().get("v2", 0) >= 1,
        timeout=90,
        what="the canary pod in the Service's rotation",
    )
    wait_until(
        lambda: rollout.outcome("v2") is not None, timeout=180, what="Argo deciding the release"
    )

    assert rollout.outcome("v2") == "rolledBack"
    (run,) = rollout.analysis_runs()
    assert run["status"]["phase"] == "Failed"
    (metric,) = run["status"]["metricResults"]
    assert metric["failed"] == 2, "failureLimit 1: the second failed measurement aborts"
    failed = [m for m in metric["measurements"] if m["phase"] == "Failed"]
    assert all(float(m["value"].strip("[]")) > 0.1 for m in failed)
    wait_until(lambda: not rollout.serving_pods("v2"), timeout=60, what="the canary scaled to 0")
    wait_until(
        lambda: stack.served_versions() == {"v1": 3}, timeout=60, what="the stable alone serving"
    )
    assert stack.probe is not None
    canary_errors = [
        value
        for labels, value in stack.probe.samples("probe_requests_total")
        if labels["version"] == "v2" and labels["code"] == "500"
    ]
    assert sum(canary_errors) > 0, "the probe's traffic reached the canary"
