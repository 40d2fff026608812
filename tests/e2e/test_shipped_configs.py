"""The configs we ship, run as shipped: a healthy release is promoted, a bad one rolled back.

Each file in config/ (deploy/config.yaml is config/testpage.yaml, byte for byte)
drives the daemon with only its addresses replaced (Prometheus, Alertmanager,
the daemon's listen address; Slack's URL comes from the environment as in the
deployment), against the demo app as deploy/example ships it (Deployments and
Service in namespace ``demo``, the autocanary image's testpage), the probe at
the example's rate, and Prometheus scraping the pods as a PodMonitor does.
config/bluegreen.yaml runs against the test bed's blue/green app instead (the
same Deployments with the test bed's testpage image; Services selecting by
version, a probe on each). Releases are shipped as the example's kustomization
says: a new version, then one with 10% errors. These take as long as the
configs say (minutes per step).

config/gateway.yaml runs through the test bed's gateway (Traefik, with the
HTTPRoute, the two backend Services and the Deployments named as its comment
says) with the probe at 120 requests/s: its 1% first step, judged over 30 s
windows, needs at least 20 canary requests a window (``minRequests``), which is
67 requests/s through the gateway; users of 1% steps have more.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import StackFactory, told_reasons

from autocanary.rollout.state import RolloutState
from autocanary_testbed.stack import CanaryStack
from autocanary_testbed.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_APP = REPO / "deploy" / "example" / "testpage.yaml"
IMAGE = "autocanary/autocanary:0.1.0"


def test_deploy_config_is_the_testpage_config_run_below() -> None:
    deployed = (REPO / "deploy" / "config.yaml").read_bytes()
    assert deployed == (REPO / "config" / "testpage.yaml").read_bytes()


def settled(version: str) -> Callable[[RolloutState], bool]:
    def check(state: RolloutState) -> bool:
        return state.canary_version == version and state.phase in (
            "succeeded",
            "rolledBack",
            "paused",
        )

    return check


def told(reason: str) -> Callable[[Any], bool]:
    """Whether an alert body mentions ``reason``."""
    return lambda body: reason in json.dumps(body)


def shipped_stack(
    stack_factory: StackFactory, config: str, scrape_interval: str, baseline: str | None = None
) -> CanaryStack:
    app: dict[str, Any]
    if config == "config/gateway.yaml":
        # Users reach the app through Traefik and the config's HTTPRoute.
        app = {"gateway": True, "probe_rate": "120/s"}
    elif config == "config/bluegreen.yaml":
        # The app as its comment says: Services selecting by version, the preview loaded
        # by a probe of its own (the test bed's blue/green app, Deployments as the example's).
        app = {"blue_green": True, "probe_rate": "20/s"}
    else:
        app = {"manifests": EXAMPLE_APP, "probe_rate": "20/s", "release_image": IMAGE}
    return stack_factory(
        namespace="demo",
        app="testpage",
        config_file=REPO / config,
        scrape_interval=scrape_interval,
        stable_env={"FAULT_ERROR_RATE": baseline} if baseline else {},
        **app,
    )


@pytest.mark.timeout(2700)
@pytest.mark.parametrize(
    ("config", "scrape_interval", "healthy_s", "baseline"),
    [
        # Default steps: 10m + 2m + 2m + 2m of holds.
        ("config/minimal.yaml", "5s", 1500, None),
        # kube-prometheus-stack's scrape interval against the config's 30s interval, and
        # an app that fails 1% of its requests in every version, as real apps do: its
        # "max: 1%" check sits at the baseline, where a few hundred requests a window
        # measure anywhere from 0 to 2.5%. Without significance every such healthy
        # release was rolled back (bench/results/versus_argo.md).
        ("config/testpage.yaml", "30s", 1200, "1%"),
        # A 2m preview and a 3m window after the switch.
        ("config/bluegreen.yaml", "5s", 900, None),
        # Steps of 1%, 5%, 25%, 50% and 100%: 7m of holds, each step's first 1m warm-up.
        pytest.param("config/gateway.yaml", "5s", 1200, None, marks=pytest.mark.traefik),
    ],
)
def test_a_shipped_config_promotes_a_healthy_release_and_rolls_back_a_bad_one(
    stack_factory: StackFactory,
    config: str,
    scrape_interval: str,
    healthy_s: int,
    baseline: str | None,
) -> None:
    stack = shipped_stack(stack_factory, config, scrape_interval, baseline)

    stack.release("v2")
    good = stack.wait_for(settled("v2"), healthy_s, "the healthy release settled")
    assert good.phase == "succeeded", good.message
    assert stack.replicas() == (3, 0)
    stable = stack.deployment(stack.stable_name)["spec"]["template"]["metadata"]["labels"]
    assert stable["version"] == "v2"

    stack.release("v3", env={"FAULT_ERROR_RATE": "10%"})
    bad = stack.wait_for(settled("v3"), 600, "the bad release settled")
    assert bad.phase == "rolledBack", bad.message
    assert any(c["verdict"] == "fail" for v in bad.verdicts for c in v.checks.values())
    if config == "config/testpage.yaml":
        # failureLimit 1, and a 2m window (four 30s scrapes) against a 30s interval:
        # the intervals failing on the same window's requests count once, so more
        # intervals failed than were counted, and the second counted one rolled back.
        assert bad.failures == 2, bad.message
        assert "(2 failed interval(s), failureLimit 1)" in bad.message
        assert sum(v.verdict == "fail" for v in bad.verdicts) > bad.failures
    assert stack.replicas() == (3, 0)
    reasons = told_reasons(stack)
    assert reasons.count("Promoted") == 1
    assert reasons.count("RolledBack") == 1
    if stack.config().get("alerts"):
        # testpage.yaml: Slack (its URL from the environment) and Alertmanager hear of both.
        for reason in ("Promoted", "RolledBack"):
            stack.receiver.wait_for(told(reason), 60, "/slack")
        wait_until(
            lambda: any(
                a["labels"].get("alertname") == "AutocanaryRolledBack"
                for a in stack.alertmanager_alerts()
            ),
            timeout=30,
            what="the rollback in Alertmanager",
        )
