"""Releasing an app that is instrumented the way real apps are, judged on its own metrics.

``shopapp`` (FastAPI + prometheus-fastapi-instrumentator, in the test bed)
never names its version in its answers: the probe only makes traffic, and
every check, ``minRequests`` and the sequential judge read the app's
``http_requests_total{status}`` and ``http_request_duration_seconds``, tied to
canary or stable by the pod's version label that Prometheus carries onto the
series (as a PodMonitor's ``podTargetLabels`` does), or, when the series carry
only the pod's name, by the pods the daemon reads from the API
(``analysis.app.podLabel``).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from e2e_helpers import StackFactory, stable_container, told_reasons

from autocanary.adapters.prometheus import PrometheusClient
from autocanary.config.models import PrometheusConfig

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

APP = {
    "requests": "http_requests_total",
    "statusLabel": "status",
    "duration": "http_request_duration_seconds",
}
THRESHOLDS = {
    "warmup": "1s",
    "minRequests": 10,
    "failureLimit": 0,
    "inconclusiveLimit": 2,
    "inconclusivePolicy": "rollback",
    "source": "app",
    "app": APP,
    "checks": [
        {"name": "error-rate", "template": "error-rate", "max": "2%"},
        {"name": "latency-p95", "template": "latency", "quantile": 0.95, "max": "250ms"},
    ],
}


def shop(stack_factory: StackFactory, **settings: Any) -> Any:
    return stack_factory(app="shop", image="autocanary/shopapp", **settings)


def settled(stack: Any, timeout: float) -> Any:
    """The release decided and every transition told.

    The daemon writes a transition with the state as a pending notice and tells it
    (Event, alerts) in a later write: the phase alone can be read before the last
    Event exists.
    """
    return stack.wait_for(
        lambda s: (
            s.canary_version == "v2"
            and s.phase in ("succeeded", "rolledBack", "paused")
            and not s.pending
        ),
        timeout,
        "settled and told",
    )


def test_healthy_release_is_promoted_on_the_apps_own_metrics(
    stack_factory: StackFactory,
) -> None:
    stack = shop(stack_factory, analysis=THRESHOLDS)
    stack.release("v2")

    final = settled(stack, 180)

    assert final.phase == "succeeded", final.message
    assert stable_container(stack)["image"] == "autocanary/shopapp:v2"
    judged = [v for v in final.verdicts if v.verdict == "pass"]
    assert judged, "promoted on passing intervals"
    # The app's own numbers: no errors, latency well under the 0.1s bucket.
    assert all(v.checks["error-rate"]["value"] == 0 for v in judged)
    assert all(v.checks["latency-p95"]["value"] <= 0.1 for v in judged)
    assert told_reasons(stack)[-1] == "Promoted"


def test_error_regression_is_rolled_back_at_a_30s_scrape_with_the_default_window(
    stack_factory: StackFactory,
) -> None:
    # interval 10s, scrape 30s, no window configured: the daemon reads the scrape interval
    # from Prometheus and looks back four scrapes (2m); a 10s window would hold no sample.
    stack = shop(
        stack_factory,
        scrape_interval="30s",
        interval="10s",
        progress_deadline="5m",
        analysis={**THRESHOLDS, "inconclusiveLimit": 20},
    )
    stack.release("v2", env={"FAULT_ERROR_RATE": "0.2"})

    final = settled(stack, 420)

    assert final.phase == "rolledBack", final.message
    assert final.step == 0
    assert "error-rate" in final.message
    failed = [v for v in final.verdicts if v.verdict == "fail"]
    assert failed, final.verdicts
    assert 0.08 < failed[-1].checks["error-rate"]["value"] < 0.4  # 20% of requests fail
    # Every interval the daemon judged had data: the window held enough scrapes.
    assert [v for v in final.verdicts if "no data" in v.reason] == []
    assert stack.replicas() == (3, 0)
    logs = (stack.workdir / "logs" / "daemon-a.log").read_text()
    assert '"scrape_interval": "30s"' in logs
    assert '"window": "2m"' in logs


def test_latency_regression_is_rolled_back_on_the_apps_histogram(
    stack_factory: StackFactory,
) -> None:
    stack = shop(stack_factory, analysis=THRESHOLDS)
    stack.release("v2", env={"FAULT_LATENCY": "400ms"})

    final = settled(stack, 120)

    assert final.phase == "rolledBack", final.message
    last = final.verdicts[-1]
    assert last.checks["latency-p95"]["verdict"] == "fail"
    assert last.checks["error-rate"]["verdict"] == "pass"
    assert last.checks["latency-p95"]["value"] >= 0.4


SEQUENTIAL = {
    "warmup": "1s",
    "minRequests": 10,
    "inconclusiveLimit": 5,
    "inconclusivePolicy": "pause",
    "source": "app",
    "app": APP,
    "sequential": {"maxDuration": "5m", "latencyThresholds": ["100ms"]},
}
ONE_STEP = ({"canary": "50%", "hold": "0s"},)


def test_sequential_judge_rolls_back_an_error_regression_on_the_apps_counter(
    stack_factory: StackFactory,
) -> None:
    stack = shop(
        stack_factory,
        stable_env={"FAULT_ERROR_RATE": "0.01"},
        probe_rate="60/s",
        steps=ONE_STEP,
        analysis=SEQUENTIAL,
    )
    stack.release("v2", env={"FAULT_ERROR_RATE": "0.1"})
    stack.wait_for(lambda s: s.stage == "analysing", 60, "the canary Ready")
    started = time.monotonic()

    final = settled(stack, 240)

    print(f"\nshopapp 1% -> 10% errors, sequential: {time.monotonic() - started:.0f}s")
    assert final.phase == "rolledBack", final.message
    assert "sequential judge" in final.message
    assert "errors" in final.message


def test_sequential_judge_rolls_back_a_latency_regression_on_the_apps_histogram(
    stack_factory: StackFactory,
) -> None:
    stack = shop(stack_factory, probe_rate="60/s", steps=ONE_STEP, analysis=SEQUENTIAL)
    # The library's default buckets are 0.1, 0.5 and 1s: the judge compares the canary's
    # share above 0.5s with the stable's above 0.1s, so the slowdown must cross 0.5s.
    stack.release("v2", env={"FAULT_LATENCY": "600ms"})

    final = settled(stack, 240)

    assert final.phase == "rolledBack", final.message
    assert "sequential judge" in final.message
    assert "latency" in final.message


def test_sequential_judge_promotes_a_healthy_release_on_the_apps_metrics(
    stack_factory: StackFactory,
) -> None:
    # Evidence of safety needs error events on both sides: a 10% baseline makes them frequent.
    # Errors only: safety at a latency threshold needs stable requests above it, and this
    # app's requests are all far below the library's first bucket (0.1s).
    errors_only = {**SEQUENTIAL, "sequential": {"maxDuration": "5m"}}
    stack = shop(
        stack_factory,
        stable_env={"FAULT_ERROR_RATE": "0.1"},
        probe_rate="80/s",
        steps=ONE_STEP,
        analysis=errors_only,
    )
    stack.release("v2", env={"FAULT_ERROR_RATE": "0.1"})

    final = settled(stack, 300)

    assert final.phase == "succeeded", final.message
    assert final.judge is not None
    assert all(m.safe for m in final.judge.metrics)


def test_bad_canary_is_rolled_back_on_series_that_name_only_their_pod(
    stack_factory: StackFactory,
) -> None:
    # The PodMonitor copies no pod label: the app's series carry namespace, pod, container
    # and job, no version. analysis.app.podLabel ties them to canary or stable by the pods
    # the daemon reads from the API at each analysis ({{ pods }}).
    stack = shop(
        stack_factory,
        pod_target_labels=(),
        analysis={**THRESHOLDS, "app": {**APP, "podLabel": "pod"}},
    )
    stack.release("v2", env={"FAULT_ERROR_RATE": "0.2"})

    final = settled(stack, 180)

    assert final.phase == "rolledBack", final.message
    assert "error-rate" in final.message
    failed = [v for v in final.verdicts if v.verdict == "fail"]
    assert failed, final.verdicts
    assert 0.08 < failed[-1].checks["error-rate"]["value"] < 0.4  # 20% of the canary's fail
    assert stack.replicas() == (3, 0)

    # The judged series really had no version: only the pod named the side. The canary's pod
    # is gone by now and its series went stale when its target left discovery, so an instant
    # selector would miss it: look back over the whole release instead.
    prometheus = PrometheusClient(PrometheusConfig(url=stack.prometheus.url))
    try:
        series = prometheus.query_vector(
            f'last_over_time(http_requests_total{{namespace="{stack.namespace}"}}[15m])'
        )
    finally:
        prometheus.close()
    assert series
    labels = [ls for ls, _ in series]
    assert all("version" not in ls and "track" not in ls for ls in labels), labels
    pods = {ls["pod"] for ls in labels}
    assert any(p.startswith("shop-canary-") for p in pods), pods
    assert any(not p.startswith("shop-canary-") for p in pods), pods
