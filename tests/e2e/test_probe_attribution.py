"""A canary that hangs: every timeout counted against the version of the pod it reached.

The probe follows the Service's EndpointSlices (``service://``), as kube-proxy
does, so a request that times out on a canary pod counts as a canary error,
not as ``unknown`` traffic: the release is rolled back, not paused for want
of canary requests.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from e2e_helpers import StackFactory, told_reasons

from autocanary.adapters.prometheus import PrometheusClient
from autocanary.config.models import PrometheusConfig
from autocanary_testbed.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def test_canary_whose_pods_hang_is_rolled_back_within_two_intervals_after_warmup(
    stack_factory: StackFactory,
) -> None:
    stack = stack_factory(
        probe_follows_service=True,
        interval="4s",
        progress_deadline="5m",
        analysis={
            "warmup": "2s",
            "minRequests": 10,
            "failureLimit": 0,
            "inconclusiveLimit": 3,
            # A pause would be the old outcome ("0 canary requests"): only a failure may roll back.
            "inconclusivePolicy": "pause",
            "checks": [{"name": "error-rate", "template": "error-rate", "max": "2%"}],
        },
    )
    # Every GET / waits an hour; /healthz answers, so the pod is Ready and in the Service.
    stack.release("v2", env={"FAULT_LATENCY": "1h"})

    ready = stack.wait_for(lambda s: s.ready_at is not None, 90, "the canary Ready")
    assert ready.ready_at is not None
    zero_at: list[datetime] = []

    def canary_at_zero() -> bool:
        if stack.replicas()[1] == 0:
            zero_at.append(datetime.now(UTC))
            return True
        return False

    wait_until(canary_at_zero, timeout=120, what="the canary at 0")
    final = stack.wait_for(lambda s: s.phase != "rollingBack", 30, "the rollback recorded")

    took = (zero_at[0] - ready.ready_at).total_seconds()
    print(f"\nhanging canary: fault onset (pod Ready, serving) to canary at 0: {took:.1f}s")
    assert final.phase == "rolledBack", final.message
    assert "error-rate" in final.message
    step_analyses = [v for v in final.verdicts if v.step == 0]
    assert 1 <= len(step_analyses) <= 2, "rolled back within two intervals after the warm-up"
    assert step_analyses[-1].verdict == "fail"
    assert step_analyses[-1].checks["error-rate"]["value"] > 0.5, "the timeouts are v2's errors"
    reasons = told_reasons(stack)
    assert "Paused" not in reasons
    assert reasons.index("AnalysisFailed") < reasons.index("RolledBack")

    # The probe counted the timeouts against v2, the version of the pod they reached.
    prometheus = PrometheusClient(PrometheusConfig(url=stack.prometheus.url))
    try:
        query = 'sum(probe_requests_total{version="v2", code="error", reason="timeout"})'
        wait_until(
            lambda: (prometheus.query_value(query) or 0) > 0,
            timeout=30,
            what="v2's timeouts in Prometheus",
        )
        assert prometheus.query_value('sum(probe_requests_total{version="unattributed"})') is None
    finally:
        prometheus.close()
