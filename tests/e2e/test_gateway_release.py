"""Releases by Gateway API weights through a real gateway: Traefik, judged on its own metrics.

The stack routes the users through Traefik (``StackSettings.gateway``): HTTPRoute
``testpage`` has one rule whose backendRefs are Services ``testpage-stable``
and ``testpage-canary``, and the probe loads the Gateway's URL. The daemon runs
a rollout with ``strategy: gateway`` and ``analysis.source: gateway``: every
verdict comes from Traefik's ``traefik_service_requests_total``, as Prometheus
scrapes it from Traefik's pod. One scenario, two releases (CI minutes are
scarce): a healthy one promoted, then one answering 20% errors rolled back at
its 5% step. (At 5% of the probe's traffic a window holds a few dozen of the
canary's requests: 5% errors there is two or three, which a 2% maximum
explains by chance one time in five; judged beyond chance, such a release
went on to the 50% step and was rolled back there.) Throughout, the HTTPRoute
is read back from the API every half second, and the probe's own per-version
counts are read with it, so the share of requests a 5% step carries is
measured where users meet it.

The rollout is this stack's, with steps of seconds, so that the shares and the
A/B rule are measured closely; config/gateway.yaml as shipped (seven minutes of
holds) runs in tests/e2e/test_shipped_configs.py.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import urllib3
from e2e_helpers import StackFactory, told_reasons
from kubernetes.client import ApiException

from autocanary.rollout.state import Reason
from autocanary_testbed.errors import HarnessError
from autocanary_testbed.stack import CanaryStack
from autocanary_testbed.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.traefik]

_POLL_S = 0.5
_SETTLE_S = 3.0  # how long the gateway may take to apply a route written to the API
WEIGHTS = (5, 50, 100)
HEADER = ("X-Canary", "always")


@dataclass(frozen=True)
class Seen:
    """One poll: the route's canary weight and A/B rule, and the probe's answers by version."""

    canary_weight: int
    rules: int
    answers: dict[str, float]


class RouteWatch:
    """The HTTPRoute as the API has it and the probe's own counts, read together."""

    def __init__(self, stack: CanaryStack) -> None:
        self.stack = stack
        self.polls: list[Seen] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="route-watch", daemon=True)

    def _poll(self) -> None:
        assert self.stack.probe is not None
        while not self._stop.wait(_POLL_S):
            try:
                route = self.stack.route()
                samples = self.stack.probe.samples("probe_requests_total")
            except (HarnessError, ApiException, urllib3.exceptions.HTTPError):
                continue  # a missed poll only merges two intervals
            # The weights of the same read as the rules (the rollout's rule is the first).
            weights = {
                ref["name"]: int(ref.get("weight", 1))
                for ref in route["spec"]["rules"][0].get("backendRefs") or []
            }
            answers: dict[str, float] = {}
            for labels, value in samples:
                version = labels.get("version", "")
                answers[version] = answers.get(version, 0.0) + value
            self.polls.append(
                Seen(weights[self.stack.canary_service], len(route["spec"]["rules"]), answers)
            )

    def __enter__(self) -> RouteWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def weights(self) -> list[int]:
        """Each canary weight the route had, in order (repeats collapsed)."""
        out: list[int] = []
        for seen in self.polls:
            if not out or out[-1] != seen.canary_weight:
                out.append(seen.canary_weight)
        return out

    def share_at(self, weight: int, canary: str) -> tuple[float, float]:
        """(canary's share, requests) the probe counted while the route read ``weight``."""
        during = [s for s in self.polls if s.canary_weight == weight]
        # The gateway applies a route some moments after the API has it: the first
        # seconds at this weight may still be the previous one's.
        during = during[int(_SETTLE_S / _POLL_S) :]
        assert len(during) >= 2, f"the route read {weight} in too few polls"
        first, last = during[0].answers, during[-1].answers
        grown = {v: last.get(v, 0.0) - first.get(v, 0.0) for v in last}
        total = sum(grown.values())
        return (grown.get(canary, 0.0) / total if total else 0.0), total


def gateway_config(stack: CanaryStack) -> dict[str, Any]:
    config = stack.config()
    (rollout,) = config["rollouts"]
    rollout.update(
        strategy="gateway",
        gateway={
            "httpRoute": stack.route_name,
            "stableService": stack.stable_service,
            "canaryService": stack.canary_service,
            "headroom": "20%",
            "match": {"header": {"name": HEADER[0], "value": HEADER[1]}},
        },
        # 5%: long enough for over 2,000 probe requests at 100/s, and several
        # intervals of the bad release's canary traffic.
        steps=[
            {"canary": "5%", "hold": "30s"},
            {"canary": "50%", "hold": "6s"},
            {"canary": "100%", "hold": "4s"},
        ],
        analysis={
            "source": "gateway",
            # Traefik's series of a backend starts with its first request: two scrapes
            # (5s apart) later its rate is known; until then intervals are inconclusive.
            "warmup": "8s",
            "minRequests": 20,
            "failureLimit": 0,
            "inconclusiveLimit": 3,
            "inconclusivePolicy": "rollback",
            "checks": [{"name": "error-rate", "template": "error-rate", "max": "2%"}],
        },
    )
    return config


def gateway_errors(stack: CanaryStack, service: str) -> float:
    """The 5xx answers Traefik counted for backend Service ``service``, as Prometheus has them."""
    assert stack.gateway is not None
    query = (
        f'sum(traefik_service_requests_total{{job="{stack.gateway.pod_monitor_job}",'
        f'service=~".*-{service}-.*",code=~"5.."}})'
    )
    with httpx.Client(trust_env=False, timeout=10) as http:
        response = http.get(f"{stack.prometheus.url}/api/v1/query", params={"query": query})
        response.raise_for_status()
        result = response.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def header_matched_versions(stack: CanaryStack, n: int = 40) -> list[str]:
    """The versions answering ``n`` requests that carry the A/B header, through the gateway."""
    assert stack.gateway is not None
    seen = []
    with httpx.Client(trust_env=False, timeout=5) as http:
        for _ in range(n):
            response = http.get(f"{stack.gateway.url}/", headers=[HEADER])
            response.raise_for_status()
            seen.append(response.headers["X-Version"])
    return seen


@pytest.mark.timeout(900)
def test_weights_through_traefik_promote_a_healthy_release_and_roll_back_a_bad_one(
    stack_factory: StackFactory,
) -> None:
    stack = stack_factory(gateway=True, daemon=False, probe_rate="100/s")
    stack.start_daemon(config=gateway_config(stack))
    assert stack.route_weights() == {stack.stable_service: 100, stack.canary_service: 0}

    # A healthy release: 5%, 50%, 100%, then back to the stable, which now runs v2.
    with RouteWatch(stack) as watch:
        stack.release("v2")
        wait_until(
            lambda: len(stack.route()["spec"]["rules"]) == 2, timeout=120, what="the A/B rule"
        )
        wait_until(
            lambda: header_matched_versions(stack, 1) == ["v2"],
            timeout=_SETTLE_S * 5,
            what="the gateway applying the A/B rule",
        )
        # Testers with the header always meet the release while it runs.
        assert set(header_matched_versions(stack)) == {"v2"}
        promoted = stack.wait_settled(timeout=300)
    assert promoted.phase == "succeeded", promoted.message
    assert watch.weights() == [0, *WEIGHTS, 0], watch.weights()
    share, requests = watch.share_at(5, "v2")
    assert requests >= 2000, f"only {requests:.0f} probe requests at 5%"
    assert 0.035 <= share <= 0.065, f"the 5% step carried {share:.2%} of {requests:.0f}"
    assert {s.rules for s in watch.polls if s.canary_weight in WEIGHTS} == {2}, "the A/B rule"
    assert stack.route_weights() == {stack.stable_service: 100, stack.canary_service: 0}
    assert len(stack.route()["spec"]["rules"]) == 1, "the A/B rule went with the release"
    assert stack.replicas() == (stack.settings.replicas, 0)
    passed = [v for v in promoted.verdicts if v.verdict == "pass"]
    assert passed, "judged"
    assert set(header_matched_versions(stack)) == {"v2"}, "the stable runs v2 now"

    # A release answering 20% errors, rolled back at its 5% step on Traefik's own counts.
    with RouteWatch(stack) as watch:
        stack.release("v3", env={"FAULT_ERROR_RATE": "20%"})
        rolled = stack.wait_settled(revision_hint=promoted.revision, timeout=300)
    assert rolled.phase == "rolledBack", rolled.message
    assert watch.weights() == [0, 5, 0], watch.weights()
    failed = [v for v in rolled.verdicts if v.verdict == "fail"]
    assert failed, rolled.verdicts
    value = failed[-1].checks["error-rate"]["value"]
    assert value is not None
    assert 0.05 < value < 0.5, f"the gateway's error rate of the canary was {value}"
    # The errors the verdict saw are Traefik's own counts of the canary's backend.
    assert gateway_errors(stack, stack.canary_service) > 0
    assert stack.route_weights() == {stack.stable_service: 100, stack.canary_service: 0}
    assert len(stack.route()["spec"]["rules"]) == 1
    assert stack.replicas() == (stack.settings.replicas, 0)
    reasons = told_reasons(stack)
    assert Reason.ROLLED_BACK in reasons
    assert Reason.PROMOTED in reasons
