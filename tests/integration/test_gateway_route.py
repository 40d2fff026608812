"""A gateway rollout's ticks on a real API server with the Gateway API's CRDs.

``RolloutEngine.tick()`` drives real Deployments (KWOK makes pods Ready) and a
real HTTPRoute (the standard channel's CRD, with its schema and validation);
what each tick wrote is read back from the API: the route's weights after
every tick, every write of its rules (counted, with the canary's Ready pods at
that moment), the replicas, the Events. Prometheus is real and empty: the
check ``vector(0) <= 1`` passes on it, so the steps advance on the test's clock,
and ``vector(1)`` fails. No gateway routes traffic here (see the e2e tier).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from kubernetes import client
from test_engine_tick import Clock, Rig, build_rig

from autocanary.adapters.kubernetes import GATEWAY_GROUP, GATEWAY_VERSION, KubeClient
from autocanary.adapters.prometheus import PrometheusClient
from autocanary.cli import format_status, rollout_status
from autocanary.config.models import PrometheusConfig, RolloutConfig
from autocanary.errors import ResourceNotFound
from autocanary.rollout import route as route_math
from autocanary.rollout import steps
from autocanary.rollout.revision import JSON
from autocanary.rollout.state import COMMAND_ANNOTATION, Reason
from autocanary_testbed.gateway import install_gateway_api
from autocanary_testbed.waiting import wait_until

pytestmark = pytest.mark.integration

TOTAL = 3  # build_rig's stable
WEIGHTS = (5, 50, 100)
HEADER = {"type": "Exact", "name": "X-Canary", "value": "always"}


def gateway_config(namespace: str, *, failing: bool = False) -> RolloutConfig:
    return RolloutConfig.model_validate(
        {
            "name": "web",
            "namespace": namespace,
            "stable": "web",
            "interval": "10s",
            "progressDeadline": "5m",
            "strategy": "gateway",
            "gateway": {
                "httpRoute": "web",
                "stableService": "web-stable",
                "canaryService": "web-canary",
                "match": {"header": {"name": "X-Canary", "value": "always"}},
            },
            "steps": [{"canary": f"{w}%", "hold": "10s"} for w in WEIGHTS],
            "analysis": {
                "warmup": "0s",
                "minRequests": 0,
                "checks": [
                    {"name": "always", "query": "vector(1)" if failing else "vector(0)", "max": 0.5}
                ],
            },
        }
    )


def http_route(namespace: str) -> JSON:
    return {
        "apiVersion": f"{GATEWAY_GROUP}/{GATEWAY_VERSION}",
        "kind": "HTTPRoute",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": [
                        {"kind": "Service", "name": "web-stable", "port": 80, "weight": 100},
                        {"kind": "Service", "name": "web-canary", "port": 80, "weight": 0},
                    ],
                },
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/legacy"}}],
                    "backendRefs": [{"kind": "Service", "name": "legacy", "port": 8080}],
                },
            ],
        },
    }


@dataclass(frozen=True)
class Written:
    """One write of the route's rules, and the canary as it stood just before it."""

    canary_weight: int
    ab: bool
    canary_ready: int
    canary_replicas: int


class CountingKube(KubeClient):
    """The engine's KubeClient, noting each write of an HTTPRoute's rules."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        super().__init__(api, identity="itest-gateway")
        self.namespace = namespace
        self.writes: list[Written] = []

    def write_route_rules(self, route: JSON, rules: list[JSON]) -> JSON:
        try:
            canary = self.read_deployment(self.namespace, "web-canary")
            ready, replicas = canary.ready, canary.replicas
        except ResourceNotFound:
            ready = replicas = 0  # deleted: the engine hands its weight back
        written = super().write_route_rules(route, rules)
        view = read_view(written, self.namespace)
        self.writes.append(Written(view.canary_weight, view.ab, ready, replicas))
        return written


def read_view(obj: JSON | None, namespace: str) -> route_math.RouteView:
    gateway = gateway_config(namespace).gateway
    assert gateway is not None
    return route_math.read(obj, gateway, namespace)


@dataclass
class GatewayRig:
    """The engine's rig (Deployments, clock, Events) with the HTTPRoute and its writes."""

    rig: Rig
    kube: CountingKube
    custom: Any  # CustomObjectsApi as the admin
    namespace: str
    seen: list[tuple[str, int, bool]]  # (phase, canary weight, A/B rule) after each tick

    def route(self) -> JSON:
        obj: JSON = self.custom.get_namespaced_custom_object(
            GATEWAY_GROUP, GATEWAY_VERSION, self.namespace, "httproutes", "web"
        )
        return obj

    def tick(self) -> str:
        """One tick on a settled cluster; the route read back from the API after it."""
        phase = self.rig.tick().phase
        view = read_view(self.route(), self.namespace)
        assert view.problem is None, view.problem
        if not self.seen or self.seen[-1] != (phase, view.canary_weight, view.ab):
            self.seen.append((phase, view.canary_weight, view.ab))
        self.rig.clock.advance(timedelta(seconds=6))
        return phase

    def tick_until(self, wanted: Any, limit: int = 60) -> None:
        for _ in range(limit):
            self.tick()
            if wanted(self.rig.state()):
                return
        raise AssertionError(f"not reached in {limit} ticks: {self.rig.state()}")


@pytest.fixture(scope="module")
def gateway_api(kube_api: client.ApiClient) -> list[str]:
    """The Gateway API's standard-channel CRDs in the test bed's API server."""
    return install_gateway_api(kube_api)


@pytest.fixture
def empty_prometheus(prometheus_factory: Any) -> Iterator[PrometheusClient]:
    """A real Prometheus scraping nothing: ``vector(0)`` is its only data."""
    prometheus = PrometheusClient(PrometheusConfig(url=prometheus_factory([]).url))
    try:
        yield prometheus
    finally:
        prometheus.close()


@pytest.fixture
def gateway_rig(
    kube_api: client.ApiClient,
    namespace: str,
    empty_prometheus: PrometheusClient,
    gateway_api: list[str],
) -> Iterator[GatewayRig]:
    custom: Any = client.CustomObjectsApi(kube_api)
    custom.create_namespaced_custom_object(
        GATEWAY_GROUP, GATEWAY_VERSION, namespace, "httproutes", http_route(namespace)
    )
    with build_rig(
        kube_api, namespace, empty_prometheus, gateway_config(namespace), Clock()
    ) as rig:
        kube = CountingKube(kube_api, namespace)
        rig.engine.kube = kube
        yield GatewayRig(rig, kube, custom, namespace, [])


def in_phase(*phases: str) -> Any:
    return lambda state: state.phase in phases


def at_step(step: int) -> Any:
    return lambda state: (
        (state.phase, state.step, state.stage) == ("progressing", step, "analysing")
    )


def test_each_step_writes_both_weights_once_and_promotion_hands_back_after_the_stable(
    gateway_rig: GatewayRig,
) -> None:
    g = gateway_rig
    before = g.route()
    assert g.tick() == "idle"
    g.rig.release("v2")
    g.tick_until(in_phase("succeeded"))

    # Read back from the API after every tick: 0 -> 5 -> 50 -> 100 -> back to the stable.
    weights = [(w, ab) for _, w, ab in g.seen]
    weights = [x for i, x in enumerate(weights) if i == 0 or weights[i - 1] != x]
    assert weights == [(0, False), (5, True), (50, True), (100, True), (0, False)], g.seen
    # One write per step and one to end it, each raising the weight only onto Ready pods.
    assert [(w.canary_weight, w.ab) for w in g.kube.writes] == [
        (5, True),
        (50, True),
        (100, True),
        (0, False),
    ]
    for w in g.kube.writes[:-1]:
        assert w.canary_ready >= steps.weighted_pods(w.canary_weight, TOTAL, 0.2), w
    # The hand-back came once the stable ran the release, the canary still whole...
    assert g.kube.writes[-1].canary_replicas == TOTAL
    stable = g.rig.deployment("web")
    assert stable.template["metadata"]["labels"]["version"] == "v2"
    assert stable.replicas == TOTAL
    # ...and the canary lost its pods only after it.
    assert g.rig.replicas() == (TOTAL, 0)
    after = g.route()
    assert after["spec"]["rules"] == before["spec"]["rules"], "the route is as it was"
    assert after["metadata"]["resourceVersion"] != before["metadata"]["resourceVersion"]
    assert g.rig.reasons().count(Reason.STEP_ADVANCED) == 2
    assert Reason.PROMOTED in g.rig.reasons()


def test_an_ab_match_is_one_extra_rule_the_api_server_accepts(gateway_rig: GatewayRig) -> None:
    g = gateway_rig
    g.tick()
    g.rig.release("v2")
    g.tick_until(at_step(0))
    # status shows the weights as the API has them.
    row = rollout_status(g.rig.admin, gateway_config(g.namespace))
    assert row["route"] == {
        "route": f"HTTPRoute {g.namespace}/web rule 0",
        "stableWeight": 95,
        "canaryWeight": 5,
        "abRule": True,
    }
    assert f"HTTPRoute {g.namespace}/web rule 0: stable 95, canary 5, A/B rule on" in (
        format_status([row])
    )
    rules = g.route()["spec"]["rules"]
    assert len(rules) == 3
    (ab,) = [r for r in rules if any(HEADER in (m.get("headers") or []) for m in r["matches"])]
    assert [ref["name"] for ref in ab["backendRefs"]] == ["web-canary"]
    assert ab["matches"][0]["path"] == {"type": "PathPrefix", "value": "/"}


def test_a_rollback_takes_the_weight_away_in_one_write_before_the_canary_shrinks(
    gateway_rig: GatewayRig,
) -> None:
    g = gateway_rig
    g.tick()
    g.rig.release("v2")
    g.tick_until(at_step(1))
    assert read_view(g.route(), g.namespace).canary_weight == 50
    writes = len(g.kube.writes)
    canary_before = g.rig.replicas()[1]
    assert canary_before == steps.weighted_pods(50, TOTAL, 0.2)

    # The analysis now fails (a config whose check fails, as after a reload).
    g.rig.engine.rollout = gateway_config(g.namespace, failing=True)
    g.tick_until(in_phase("rollingBack", "rolledBack"))
    # The very tick that judged it wrote the weight back, and left the canary's pods.
    assert [(w.canary_weight, w.ab) for w in g.kube.writes[writes:]] == [(0, False)]
    assert read_view(g.route(), g.namespace).canary_weight == 0
    assert g.rig.replicas() == (TOTAL, canary_before)
    g.tick_until(in_phase("rolledBack"))
    wait_until(lambda: g.rig.replicas() == (TOTAL, 0), timeout=30, what="canary scaled to 0")
    assert len(g.kube.writes) == writes + 1, "one write ended it"
    assert Reason.ROLLED_BACK in g.rig.reasons()


def test_an_abort_ends_the_release_through_the_route_as_well(gateway_rig: GatewayRig) -> None:
    g = gateway_rig
    g.tick()
    g.rig.release("v2")
    g.tick_until(at_step(0))
    g.rig.admin.set_command(g.namespace, "web-canary", "abort")
    g.tick_until(in_phase("rolledBack"))
    assert read_view(g.route(), g.namespace) == route_math.RouteView(stable_weight=100)
    assert COMMAND_ANNOTATION not in g.rig.deployment("web-canary").annotations
    assert g.rig.replicas() == (TOTAL, 0)


def test_a_route_deleted_mid_release_pauses_it_with_an_event(gateway_rig: GatewayRig) -> None:
    g = gateway_rig
    g.tick()
    g.rig.release("v2")
    g.tick_until(at_step(0))
    g.custom.delete_namespaced_custom_object(
        GATEWAY_GROUP, GATEWAY_VERSION, g.namespace, "httproutes", "web"
    )
    result = g.rig.tick()
    assert result.phase == "paused"
    (event,) = [e for e in g.rig.events() if e["reason"] == Reason.ROUTE_CHANGED]
    assert event["type"] == "Warning"
    assert f"the HTTPRoute {g.namespace}/web was not found" in event["message"]
    assert "will not be promoted" in event["message"]
    for _ in range(3):
        g.rig.clock.advance(timedelta(seconds=20))
        assert g.rig.tick().phase == "paused"
    assert Reason.PROMOTING not in g.rig.reasons()


def test_weights_edited_by_someone_else_pause_the_release(gateway_rig: GatewayRig) -> None:
    g = gateway_rig
    g.tick()
    g.rig.release("v2")
    g.tick_until(at_step(0))
    edited = g.route()
    refs = edited["spec"]["rules"][0]["backendRefs"]
    refs[0]["weight"], refs[1]["weight"] = 70, 30
    g.custom.replace_namespaced_custom_object(
        GATEWAY_GROUP, GATEWAY_VERSION, g.namespace, "httproutes", "web", edited
    )
    assert g.rig.tick().phase == "paused"
    (event,) = [e for e in g.rig.events() if e["reason"] == Reason.ROUTE_CHANGED]
    assert "changed by someone else (stable 70, canary 30)" in event["message"]
    # Left as the person wrote it: the daemon does not fight them.
    assert read_view(g.route(), g.namespace).canary_weight == 30


def test_a_canary_deleted_mid_release_gets_its_weight_back_to_the_stable(
    gateway_rig: GatewayRig, kube_api: client.ApiClient
) -> None:
    g = gateway_rig
    g.tick()
    g.rig.release("v2")
    g.tick_until(at_step(1))
    assert read_view(g.route(), g.namespace).canary_weight == 50
    client.AppsV1Api(kube_api).delete_namespaced_deployment("web-canary", g.namespace)
    wait_until(
        lambda: (
            not [
                d
                for d in client.AppsV1Api(kube_api).list_namespaced_deployment(g.namespace).items
                if d.metadata.name == "web-canary"
            ]
        ),
        timeout=30,
        what="the canary Deployment gone",
    )
    result = g.rig.engine.tick()
    assert result.phase == "rolledBack"
    assert read_view(g.route(), g.namespace) == route_math.RouteView(stable_weight=100)
    assert g.rig.deployment("web").replicas == TOTAL
    assert "sends every request to web-stable again" in result.transitions[0].message
