"""The install layouts besides deploy/: the overlay users copy, and the Operator's scraping
of the demo's probe. Rendered by kubectl's kustomize, as users apply them."""

from __future__ import annotations

import pytest
from kustomize_render import DEPLOY, REPO, render

from autocanary.config.loader import parse_config

pytestmark = pytest.mark.integration


def test_the_overlay_example_replaces_config_image_and_rbac_without_editing_deploy() -> None:
    objects = render(REPO / "examples" / "overlay")
    (config_map,) = [o for o in objects if o["kind"] == "ConfigMap"]
    assert config_map["metadata"]["name"].startswith("autocanary-config-")
    config = parse_config(config_map["data"]["config.yaml"], "overlay config.yaml")
    assert [(r.name, r.namespace) for r in config.rollouts] == [("checkout", "shop")]
    assert (
        config_map["data"]["config.yaml"]
        == (REPO / "examples" / "overlay" / "config.yaml").read_text()
    )
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    assert spec["containers"][0]["image"] == "registry.example.com/platform/autocanary:0.1.0"
    volumes = {v["configMap"]["name"] for v in spec["volumes"] if "configMap" in v}
    assert volumes == {config_map["metadata"]["name"]}
    roles = {
        (o["kind"], o["metadata"]["namespace"]) for o in objects if o["kind"].startswith("Role")
    }
    # The demo's grants are gone; the rollout's namespace and the Lease's remain.
    assert roles == {
        ("Role", "shop"),
        ("RoleBinding", "shop"),
        ("Role", "autocanary"),
        ("RoleBinding", "autocanary"),
    }
    (shop_role,) = [
        o for o in objects if o["kind"] == "Role" and o["metadata"]["namespace"] == "shop"
    ]
    deployments = next(r for r in shop_role["rules"] if r["resources"] == ["deployments"])
    assert set(deployments["resourceNames"]) == {r.stable for r in config.rollouts} | {
        r.canary_name for r in config.rollouts
    }


def test_the_operator_scrapes_the_demos_probe() -> None:
    monitors = [o for o in render(DEPLOY / "prometheus") if o["kind"] == "PodMonitor"]
    probe = next(
        o
        for o in render(DEPLOY / "example")
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "probe"
    )
    template = probe["spec"]["template"]
    probe_ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
    scraping = [
        m
        for m in monitors
        if m["metadata"]["namespace"] == probe["metadata"]["namespace"]
        and m["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    ]
    assert len(scraping) == 1, "one PodMonitor selects the probe's pods"
    endpoints = scraping[0]["spec"]["podMetricsEndpoints"]
    assert [e["port"] for e in endpoints] == ["http-metrics"]
    assert "http-metrics" in probe_ports
    # The probe's own target/version labels are the ones the built-in queries select.
    assert endpoints[0]["honorLabels"] is True
