"""Gateway API weights in the pure decision: weights by step, one write each, the order of endings.

A :class:`GatewayCluster` adds an HTTPRoute to the simulated Deployments, as
JSON shaped like the API's, read with :func:`route.read` and written with
:func:`route.rules_with` as the engine does: every write of its rules is
recorded with the Deployments as they stood. The properties asserted on every
run: the canary's weight never exceeds what its Ready pods carry (the step's
pods with headroom); the stable never has fewer than the total; the weight
goes back to the stable before the canary loses a pod.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from builders import (
    JSON,
    T0,
    DictSource,
    Driver,
    FakeCluster,
    FakeDeployment,
    make_rollout,
    phase_is,
    pod_template,
    sequence,
)
from pydantic import ValidationError

from autocanary.analysis.thresholds import IntervalVerdict, plan
from autocanary.config.loader import load_config
from autocanary.config.models import GatewayConfig, RolloutConfig
from autocanary.errors import ConfigError
from autocanary.rollout import route, steps
from autocanary.rollout.decision import Desired, Observation
from autocanary.rollout.interval import evaluate
from autocanary.rollout.state import Reason, RolloutState, dumps, loads

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "gateway.yaml"
V1_IMAGE = "registry.local/shop/web:1.0"
V2_IMAGE = "registry.local/shop/web:2.0"
TOTAL = 10
HEADER = {"name": "X-Canary", "value": "always"}


def gateway(**overrides: Any) -> RolloutConfig:
    """Rollout 'web' by Gateway API weights 1, 5, 25, 50, 100%, 30s holds and intervals."""
    settings: JSON = {
        "httpRoute": "web",
        "stableService": "web-stable",
        "canaryService": "web-canary",
        "match": {"header": HEADER},
    }
    settings.update(overrides.pop("gateway", {}))
    data: JSON = {
        "name": "web",
        "namespace": "shop",
        "stable": "web",
        "interval": "30s",
        "progressDeadline": "5m",
        "strategy": "gateway",
        "gateway": settings,
        "steps": [{"canary": f"{w}%", "hold": "30s"} for w in (1, 5, 25, 50, 100)],
        "analysis": {
            "minRequests": 10,
            "warmup": "0s",
            "checks": [{"name": "errors", "template": "error-rate", "max": "1%"}],
        },
        **overrides,
    }
    return RolloutConfig.model_validate(data)


def http_route(canary_weight: int = 0) -> JSON:
    """An HTTPRoute as the API returns it: a rule for /api elsewhere, the split rule first."""
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "1"},
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": [
                        {"name": "web-stable", "port": 80, "weight": 100 - canary_weight},
                        {"name": "web-canary", "port": 80, "weight": canary_weight},
                    ],
                },
                {
                    "name": "legacy",
                    "matches": [{"path": {"type": "PathPrefix", "value": "/legacy"}}],
                    "backendRefs": [{"name": "legacy", "port": 8080}],
                },
            ],
        },
    }


@dataclass(frozen=True)
class RouteWrite:
    """One write of the route's rules, with the Deployments as they stood then."""

    canary_weight: int
    ab: bool
    canary_ready: int
    canary_replicas: int
    stable_ready: int
    phase: str


@dataclass
class GatewayCluster(FakeCluster):
    """The Deployments plus the HTTPRoute, every write of it recorded."""

    route_obj: JSON | None = field(default_factory=http_route)
    writes: list[RouteWrite] = field(default_factory=list)
    phase: str = ""
    # The canary's weight each time the stable's template changed.
    template_changed_at: list[int] = field(default_factory=list)

    @classmethod
    def make(cls, total: int = TOTAL) -> GatewayCluster:
        return cls(
            stable=FakeDeployment("web", pod_template(V1_IMAGE, version="v1"), total),
            canary=FakeDeployment(
                "web-canary", pod_template(V1_IMAGE, track="canary", version="v1"), 0
            ),
        )

    def view(self) -> route.RouteView:
        return route.read(self.route_obj, gateway_config(), "shop")

    def observe(self) -> Observation:
        return dataclasses.replace(super().observe(), route=self.view())

    def apply(self, desired: Desired) -> None:
        # The engine's order: the route first, then the Deployments.
        current = self.view()
        if (
            self.route_obj is not None
            and current.problem is None
            and (desired.canary_weight, desired.ab) != (None, None)
        ):
            weight = (
                current.canary_weight if desired.canary_weight is None else desired.canary_weight
            )
            ab = current.ab if desired.ab is None else desired.ab
            rules = route.rules_with(self.route_obj, gateway_config(), weight, ab)
            if rules != self.route_obj["spec"]["rules"]:
                self.route_obj = {**self.route_obj, "spec": {**self.route_obj["spec"]}}
                self.route_obj["spec"]["rules"] = rules
                self.writes.append(
                    RouteWrite(
                        weight,
                        ab,
                        self.canary.ready(),
                        self.canary.replicas,
                        self.stable.ready(),
                        self.phase,
                    )
                )
        if desired.stable_template is not None and desired.stable_template != self.stable.template:
            self.template_changed_at.append(self.view().canary_weight)
        super().apply(desired)


def gateway_config() -> GatewayConfig:
    config = gateway().gateway
    assert config is not None
    return config


def driver(verdicts: Any = None) -> Driver:
    d = Driver(gateway(), GatewayCluster.make())
    if verdicts is not None:
        d.verdicts = verdicts
    d.cluster.release(V2_IMAGE, version="v2")
    return d


def cluster(d: Driver) -> GatewayCluster:
    assert isinstance(d.cluster, GatewayCluster)
    return d.cluster


def run(d: Driver, until: Any, limit: int = 300) -> None:
    """Tick until ``until(state)``, keeping the cluster's note of the phase for its writes."""
    for _ in range(limit):
        cluster(d).phase = d.state.phase
        record = d.tick()
        if until(record.decision.state):
            return
    raise AssertionError(f"not reached; state {d.state}")


def assert_weights_carried_and_capacity_kept(d: Driver) -> None:
    for w in cluster(d).writes:
        if w.canary_weight > 0 or w.ab:
            need = steps.weighted_pods(max(w.canary_weight, 1), TOTAL, 0.2)
            assert w.canary_ready >= need, f"weight {w.canary_weight} raised before Ready: {w}"
    for record in d.history:
        assert record.stable_spec >= TOTAL, f"the stable lost capacity at {record.now}"


# ------------------------------------------------------------------ config


def test_steps_are_whole_percentages_of_traffic_and_pods_follow_with_headroom() -> None:
    rollout = gateway()
    assert rollout.weights == [1, 5, 25, 50, 100]
    assert rollout.scales_down_stable is False
    # ceil(10 x w x 1.2), at least 1, at most the total.
    assert [steps.weighted_pods(w, TOTAL, 0.2) for w in rollout.weights] == [1, 1, 3, 6, 10]
    assert steps.weighted_pods(5, 100, 0.2) == 6
    assert steps.weighted_pods(5, 100, 0.0) == 5


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"steps": [{"canary": 1}, {"canary": "50%"}]}, r"steps\[0\].*not a pod count \(1\)"),
        (
            {"steps": [{"canary": "5%"}, {"canary": "5%"}]},
            r"steps\[1\] \(5%\) is not above steps\[0\] \(5%\)",
        ),
        ({"steps": [{"canary": "2.5%"}]}, r"steps\[0\]: a traffic weight is a whole percentage"),
        ({"scaleDownStable": True}, "'scaleDownStable' does not apply to strategy gateway"),
        ({"strategy": "canary"}, "'gateway' applies only to strategy: gateway"),
        (
            {"gateway": {"canaryService": "web-stable"}},
            "'canaryService' must name a different Service than 'stableService'",
        ),
        ({"gateway": {"rule": -1}}, "expected a rule index"),
        ({"gateway": {"match": {}}}, "exactly one of 'header' or 'cookie'"),
        ({"gateway": {"match": {"header": {"name": "X Bad", "value": "1"}}}}, "name"),
    ],
)
def test_a_gateway_rollout_that_does_not_fit_is_refused_saying_why(
    data: JSON, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        gateway(**data)


def test_the_gateway_metrics_source_needs_the_gateway_strategy() -> None:
    with pytest.raises(ValidationError, match=r"source 'gateway'.*needs strategy gateway"):
        RolloutConfig.model_validate(
            {
                "name": "web",
                "namespace": "shop",
                "stable": "web",
                "analysis": {
                    "source": "gateway",
                    "checks": [{"name": "e", "template": "error-rate", "max": "1%"}],
                },
            }
        )


def test_the_shipped_gateway_config_loads_with_its_route_and_weights() -> None:
    config = load_config(SHIPPED)
    rollout = config.rollout("testpage")
    assert rollout.gateway is not None
    assert rollout.gateway.http_route == "testpage"
    assert rollout.gateway.match is not None
    assert rollout.gateway.match.header is not None
    assert rollout.weights == [1, 5, 25, 50, 100]
    assert rollout.analysis.source == "gateway"


def test_a_located_error_names_the_step_of_a_gateway_rollout(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    text = SHIPPED.read_text(encoding="utf-8")
    path.write_text(text.replace("{canary: 5%, hold: 2m}", "{canary: 3, hold: 2m}"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (problem,) = caught.value.problems
    assert problem.line == text.splitlines().index("      - {canary: 5%, hold: 2m}") + 1
    assert problem.path == "rollouts[0].steps[1].canary"
    assert "not a pod count (3)" in problem.message


# ------------------------------------------------------------------ the route, pure


def test_weights_are_set_in_the_named_rule_and_the_ab_rule_is_added_after_the_others() -> None:
    gw = gateway_config()
    before = http_route()
    rules = route.rules_with(before, gw, 5, ab=True)
    assert rules[0]["backendRefs"] == [
        {"name": "web-stable", "port": 80, "weight": 95},
        {"name": "web-canary", "port": 80, "weight": 5},
    ]
    assert rules[1] == before["spec"]["rules"][1], "other rules are kept as read"
    assert rules[2] == {
        "matches": [
            {
                "path": {"type": "PathPrefix", "value": "/"},
                "headers": [{"type": "Exact", "name": "X-Canary", "value": "always"}],
            }
        ],
        "backendRefs": [{"name": "web-canary", "port": 80, "weight": 1}],
    }
    written = {**before, "spec": {**before["spec"], "rules": rules}}
    assert route.read(written, gw, "shop") == route.RouteView(
        stable_weight=95, canary_weight=5, ab=True
    )
    # Taken away in one list again, whatever weight it had.
    again = route.rules_with(written, gw, 0, ab=False)
    assert again == route.rules_with(before, gw, 0, ab=False)
    assert len(again) == 2


def test_a_rule_is_found_by_name_and_a_cookie_match_is_a_cookie_header_regex() -> None:
    gw = GatewayConfig.model_validate(
        {
            "httpRoute": "web",
            "rule": "legacy",
            "stableService": "legacy",
            "canaryService": "legacy-canary",
            "match": {"cookie": {"name": "beta", "value": "yes"}},
        },
    )
    obj = http_route()
    obj["spec"]["rules"][1]["backendRefs"].append(
        {"name": "legacy-canary", "port": 8080, "weight": 0}
    )
    view = route.read(obj, gw, "shop")
    assert view == route.RouteView(stable_weight=1, canary_weight=0, ab=False)
    rules = route.rules_with(obj, gw, 50, ab=True)
    header = rules[2]["matches"][0]["headers"][0]
    assert header["name"] == "Cookie"
    assert header["type"] == "RegularExpression"
    pattern = re.compile(header["value"])
    assert pattern.fullmatch("a=1; beta=yes; c=2")
    assert pattern.fullmatch("beta=yes")
    assert not pattern.fullmatch("notbeta=yes")
    assert not pattern.fullmatch("beta=yesno")


def _deleted(obj: JSON) -> JSON | None:
    return None


def _no_rules(obj: JSON) -> JSON | None:
    obj["spec"]["rules"] = []
    return obj


def _no_canary(obj: JSON) -> JSON | None:
    obj["spec"]["rules"][0]["backendRefs"].pop()
    return obj


def _third_backend(obj: JSON) -> JSON | None:
    obj["spec"]["rules"][0]["backendRefs"].append({"name": "other", "port": 1})
    return obj


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (_deleted, "the HTTPRoute shop/web was not found"),
        (_no_rules, r"has no rule 0 \(it has 0\)"),
        (_no_canary, "has no backendRef to Service web-canary"),
        (_third_backend, "also sends traffic to other"),
    ],
)
def test_a_route_that_cannot_be_steered_says_why(edit: Any, problem: str) -> None:
    view = route.read(edit(copy.deepcopy(http_route())), gateway_config(), "shop")
    assert view.problem is not None
    assert re.search(problem, view.problem), view.problem


# ------------------------------------------------------------------ releases


def test_a_healthy_release_raises_the_weight_step_by_step_then_hands_back_to_the_stable() -> None:
    d = driver()
    run(d, phase_is("succeeded"))
    writes = cluster(d).writes
    assert [(w.canary_weight, w.ab) for w in writes] == [
        (1, True),
        (5, True),
        (25, True),
        (50, True),
        (100, True),
        (0, False),
    ], "one write per step, and one to end it"
    assert_weights_carried_and_capacity_kept(d)
    # Promotion: the stable runs the release whole and Ready before the weight goes back...
    back = writes[-1]
    assert back.phase == "promoting"
    assert back.stable_ready >= TOTAL
    assert back.canary_replicas == TOTAL
    assert d.cluster.stable_revision == d.cluster.canary_revision
    assert cluster(d).template_changed_at == [100], "the stable rolled with no requests"
    # ...and the canary loses its pods only after.
    assert d.cluster.canary.replicas == 0
    assert cluster(d).view() == route.RouteView(stable_weight=100, canary_weight=0, ab=False)
    assert d.reasons().count(Reason.STEP_ADVANCED) == 4
    assert Reason.PROMOTED in d.reasons()


def test_a_failed_step_takes_the_weight_away_in_one_write_before_the_canary_shrinks() -> None:
    d = driver(verdicts=sequence("pass", "pass", "fail"))
    run(d, phase_is("rolledBack"))
    writes = cluster(d).writes
    failed_at = writes[-1]
    assert (failed_at.canary_weight, failed_at.ab) == (0, False)
    assert failed_at.phase == "progressing", "written in the very tick that judged it"
    assert failed_at.canary_replicas > 0, "the canary kept its pods while the weight went"
    rolling_back = [r for r in d.history if r.decision.state.phase == "rollingBack"]
    assert rolling_back[0].canary_spec > 0
    assert d.cluster.canary.replicas == 0
    assert d.reasons()[-1] == Reason.ROLLED_BACK or Reason.ROLLED_BACK in d.reasons()
    assert_weights_carried_and_capacity_kept(d)


def test_a_restarted_daemon_resumes_at_any_tick_with_the_same_writes() -> None:
    reference = driver()
    run(reference, phase_is("succeeded"))
    expected = [(w.canary_weight, w.ab) for w in cluster(reference).writes]
    for crash_at in range(1, len(reference.history), 3):
        d = driver()
        for _ in range(crash_at):
            d.tick()
        # The daemon dies: only the persisted state and the cluster remain.
        resumed = Driver(d.rollout, d.cluster, state=loads(dumps(d.state)), now=d.now)
        run(resumed, phase_is("succeeded"))
        assert [(w.canary_weight, w.ab) for w in cluster(resumed).writes] == expected


def test_a_route_deleted_mid_release_pauses_it_and_it_is_never_promoted() -> None:
    d = driver()
    run(d, lambda s: s.phase == "progressing" and s.step == 2 and s.stage == "analysing")
    cluster(d).route_obj = None
    run(d, phase_is("paused"))
    told = d.history[-1].decision.transitions
    assert [t.reason for t in told] == [Reason.ROUTE_CHANGED]
    assert "HTTPRoute shop/web was not found" in told[0].message
    assert "will not be promoted" in told[0].message
    d.tick("resume")
    d.run(30)
    assert d.state.phase == "paused", "resumed onto a missing route: paused again"
    assert Reason.PROMOTING not in d.reasons()
    d.tick("abort")
    run(d, phase_is("rolledBack"))
    assert d.cluster.canary.replicas == 0


def test_weights_edited_by_someone_else_pause_the_release() -> None:
    d = driver()
    run(d, lambda s: s.phase == "progressing" and s.step == 1 and s.stage == "analysing")
    obj = cluster(d).route_obj
    assert obj is not None
    refs = obj["spec"]["rules"][0]["backendRefs"]
    refs[0]["weight"], refs[1]["weight"] = 63, 37
    record = d.tick()
    assert record.decision.state.phase == "paused"
    (told,) = record.decision.transitions
    assert told.reason == Reason.ROUTE_CHANGED
    assert "changed by someone else (stable 63, canary 37)" in told.message


def test_a_release_does_not_start_while_the_route_already_sends_to_the_canary() -> None:
    d = Driver(gateway(), GatewayCluster.make())
    cluster(d).route_obj = http_route(canary_weight=10)
    d.cluster.release(V2_IMAGE, version="v2")
    record = d.tick()
    assert record.decision.state.phase == "blocked"
    assert "must send every request to the stable Service web-stable" in (
        record.decision.transitions[0].message
    )
    assert cluster(d).writes == []
    # Put right by hand, then resumed: the release starts from the stable's 100.
    cluster(d).route_obj = http_route(canary_weight=0)
    resumed = d.tick("resume")
    assert resumed.decision.state.phase == "progressing"
    run(d, phase_is("succeeded"))


def test_an_abort_mid_release_removes_the_ab_rule_and_the_weight_in_one_write() -> None:
    d = driver()
    run(d, lambda s: s.phase == "progressing" and s.step == 3 and s.stage == "analysing")
    before = len(cluster(d).writes)
    d.tick("abort")
    run(d, phase_is("rolledBack"))
    after = cluster(d).writes[before:]
    assert [(w.canary_weight, w.ab) for w in after] == [(0, False)]
    assert d.cluster.canary.replicas == 0


# ------------------------------------------------------------------ the gateway's metrics


def test_gateway_metrics_tie_series_to_a_side_by_the_backend_service_traefik_names() -> None:
    rollout = gateway(
        analysis={
            "source": "gateway",
            "checks": [
                {"name": "errors", "template": "error-rate", "max": "1%"},
                {"name": "vs-stable", "template": "error-rate", "relative": {"tolerance": "50%"}},
            ],
        }
    )
    planned = plan(rollout, "v2", "v1")
    canary, stable = planned.checks[1].canary_query, planned.checks[1].stable_query
    assert stable is not None
    assert "traefik_service_requests_total{" in canary
    assert 'code=~"5.."' in canary
    assert "shop-web-canary-http-[0-9]+|.*-svc-shop-web-canary-[0-9]+)@kubernetesgateway" in canary
    assert "shop-web-stable-http-[0-9]+|.*-svc-shop-web-stable-[0-9]+)@kubernetesgateway" in stable
    assert "traefik_service_requests_total{" in planned.canary_requests_query
    # Traefik's names for a Kubernetes Gateway backend: <ns>-<Service>-http-<port> (v3.6),
    # <router>-svc-<ns>-<Service>-<index> (v3.7).
    router = "httproute-shop-web-gw-shop-gw-ep-web-0-1c0cf64bde"
    canary_pattern = re.search(r'service=~"(\([^"]+)"', canary)
    assert canary_pattern is not None
    matcher = re.compile(canary_pattern.group(1))
    assert matcher.fullmatch(f"{router}-svc-shop-web-canary-1@kubernetesgateway")
    assert matcher.fullmatch(
        "httproute-shop-web-gw-shop-gw-ep-web-2-0a1b2c3d4e-svc-shop-web-canary-0@kubernetesgateway"
    ), "the A/B rule's backend is the canary too"
    assert not matcher.fullmatch(f"{router}-svc-shop-web-stable-0@kubernetesgateway")
    assert matcher.fullmatch("shop-web-canary-http-8080@kubernetesgateway")
    assert not matcher.fullmatch("shop-web-stable-http-8080@kubernetesgateway")
    assert not matcher.fullmatch("shop-web-canary-extra-http-8080@kubernetesgateway")
    assert not matcher.fullmatch(f"{router}-wrr@kubernetesgateway")


def test_a_promotion_by_command_moves_all_requests_to_the_whole_canary_first() -> None:
    d = driver()
    run(d, lambda s: s.phase == "progressing" and s.step == 1 and s.stage == "analysing")
    before = len(cluster(d).writes)
    d.tick("promote")
    run(d, phase_is("succeeded"))
    after = cluster(d).writes[before:]
    assert [(w.canary_weight, w.ab) for w in after] == [(100, True), (0, False)]
    assert after[0].canary_ready == TOTAL, "all of it only onto the whole canary, Ready"
    assert cluster(d).template_changed_at == [100], "the stable rolled with no requests"
    assert_weights_carried_and_capacity_kept(d)
    assert d.cluster.canary.replicas == 0


def test_pause_leaves_the_route_alone_and_retry_starts_a_rolled_back_revision_from_zero() -> None:
    d = driver()
    run(d, lambda s: s.phase == "progressing" and s.step == 2 and s.stage == "analysing")
    writes = len(cluster(d).writes)
    d.tick("pause")
    d.run(20)
    assert d.state.phase == "paused"
    assert len(cluster(d).writes) == writes, "users stay where they are while paused"
    assert cluster(d).view().canary_weight == 25
    d.tick("abort")
    run(d, phase_is("rolledBack"))
    assert cluster(d).view() == route.RouteView(stable_weight=100)
    d.run(5)
    assert d.state.phase == "rolledBack", "a rolled-back revision is not retried by itself"
    d.tick("retry")
    run(d, phase_is("succeeded"))
    retried = [(w.canary_weight, w.ab) for w in cluster(d).writes[writes + 1 :]]
    assert retried == [(1, True), (5, True), (25, True), (50, True), (100, True), (0, False)]


# ------------------------------------------------------------------ a step without the stable

CANARY, STABLE = "v2", "v1"


def _judged_at(rollout: RolloutConfig, step: int) -> IntervalVerdict:
    """One interval at ``step``: the canary healthy, the stable without a single request."""
    at = T0 + timedelta(minutes=10)
    state = RolloutState(
        phase="progressing",
        canary_version=CANARY,
        stable_version=STABLE,
        total=TOTAL,
        step=step,
        stage="analysing",
        ready_at=at - timedelta(minutes=2),
        last_analysis_at=at - timedelta(seconds=30),
    )
    full = plan(rollout, CANARY, STABLE, timedelta(seconds=30))
    # The canary's queries answer; the stable's have no data.
    answers: dict[str, float | Exception | None] = {full.canary_requests_query: 500.0}
    answers.update({c.canary_query: 0.001 for c in full.checks})
    return evaluate(DictSource(answers), rollout, state, at).verdict


def compared() -> RolloutConfig:
    return gateway(
        analysis={
            "minRequests": 10,
            "warmup": "0s",
            "checks": [
                {"name": "errors", "template": "error-rate", "max": "1%"},
                {
                    "name": "errors-vs-stable",
                    "template": "error-rate",
                    "relative": {"tolerance": "50%"},
                },
                {
                    "name": "latency",
                    "template": "latency",
                    "max": "500ms",
                    "relative": {"tolerance": "20%"},
                },
            ],
        }
    )


def test_a_step_at_100_percent_is_judged_by_absolute_thresholds_alone() -> None:
    # The shipped config paused at its 100% step: "errors-vs-stable: stable value is
    # NaN (no traffic in the interval?)", three times, so it never promoted.
    rollout = compared()
    below = _judged_at(rollout, 3)  # 50%: the stable serves half, its silence is a problem
    assert below.verdict == "inconclusive"
    whole = _judged_at(rollout, 4)  # 100%: nobody reaches the stable
    assert whole.verdict == "pass", whole.reason
    assert [c.name for c in whole.checks] == ["errors", "latency"]
    latency = whole.checks[1]
    assert latency.stable_value is None
    assert latency.threshold == "<= 0.5"


def test_a_rollout_with_only_comparisons_and_a_step_at_100_percent_is_refused() -> None:
    only_relative = {
        "checks": [
            {"name": "errors-vs-stable", "template": "error-rate", "relative": {"tolerance": "50%"}}
        ]
    }
    with pytest.raises(ValidationError, match="step 5 sends every request to the canary"):
        gateway(analysis=only_relative)
    # Below 100% the stable always has traffic to compare with.
    steps = [{"canary": f"{w}%", "hold": "30s"} for w in (1, 5, 50)]
    assert gateway(analysis=only_relative, steps=steps).weights == [1, 5, 50]
    # The same for a replica canary whose stable shrinks to nothing, not one that surges.
    replica_steps = [{"canary": 1, "hold": "1m"}, {"canary": "100%", "hold": "1m"}]
    with pytest.raises(ValidationError, match="step 2 sends every request to the canary"):
        make_rollout(analysis=only_relative, steps=replica_steps)
    surging = make_rollout(analysis=only_relative, steps=replica_steps, scaleDownStable=False)
    assert not surging.scales_down_stable
