"""The test bed's pod network, Service rotation and KWOK stages (pure logic)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from autocanary_testbed.kubeproxy import SliceEndpoint, endpoints_of, rotation
from autocanary_testbed.kwok_stages import RUNNER_ANNOTATION, write_pod_stages
from autocanary_testbed.network import PodNetwork


def test_a_pod_ip_listens_on_its_loopback_twin() -> None:
    network = PodNetwork(77)
    assert network.pod_cidr == "10.77.0.0/16"
    assert network.host_ip("10.77.3.9") == "127.77.3.9"
    assert network.host_address("10.77.0.1", 8080) == "127.77.0.1:8080"
    with pytest.raises(ValueError, match=r"10\.78\.0\.1 is not in the pod network 10\.77\.0\.0/16"):
        network.host_ip("10.78.0.1")


def test_service_cluster_ips_are_loopback_apart_from_every_pod_twin() -> None:
    network = PodNetwork(77)
    assert network.service_cidr == "127.1.77.0/24"
    assert network.kubernetes_service_ip == "127.1.77.1"
    services = ipaddress.ip_network(network.service_cidr)
    assert services.subnet_of(ipaddress.ip_network("127.0.0.0/8"))
    # Pod twins are 127.<n>.0.0/16 with n in 64-250; 127.0.0.1 serves the control plane.
    assert not any(
        services.overlaps(ipaddress.ip_network(f"127.{n}.0.0/16")) for n in range(64, 251)
    )
    assert ipaddress.ip_address("127.0.0.1") not in services


def test_the_prometheus_relabel_rule_is_the_same_translation() -> None:
    rule = PodNetwork(77).relabel_to_host("__address__", "__address__")
    pattern = str(rule["regex"])
    replacement = str(rule["replacement"]).replace("${", "\\g<").replace("}", ">")
    assert re.fullmatch(pattern, "10.77.3.9:8080")
    assert re.sub(pattern, replacement, "10.77.3.9:8080") == "127.77.3.9:8080"
    assert not re.fullmatch(pattern, "10.78.3.9:8080")


def test_two_control_planes_never_hold_the_same_range() -> None:
    networks = [PodNetwork.reserve() for _ in range(5)]
    try:
        assert len({n.octet for n in networks}) == 5
        assert all(64 <= n.octet <= 250 for n in networks)
    finally:
        for network in networks:
            network.release()


def _slice(endpoints: list[dict[str, Any]], port_name: str = "http") -> SimpleNamespace:
    return SimpleNamespace(
        address_type="IPv4",
        ports=[SimpleNamespace(name=port_name, port=8080)],
        endpoints=[
            SimpleNamespace(
                addresses=[e["ip"]],
                target_ref=SimpleNamespace(name=e["pod"]),
                conditions=SimpleNamespace(
                    ready=e.get("ready"), serving=e.get("serving"), terminating=e.get("terminating")
                ),
            )
            for e in endpoints
        ],
    )


def test_rotation_is_the_ready_endpoints() -> None:
    slices = [
        _slice(
            [
                {"ip": "10.77.0.1", "pod": "a", "ready": True, "serving": True},
                {
                    "ip": "10.77.0.2",
                    "pod": "b",
                    "ready": False,
                    "serving": True,
                    "terminating": True,
                },
                {"ip": "10.77.0.3", "pod": "c", "ready": False, "serving": False},
            ]
        )
    ]
    assert [e.pod for e in rotation(endpoints_of(slices, "http"))] == ["a"]
    assert endpoints_of(slices, "metrics") == []


def test_rotation_falls_back_to_serving_terminating_endpoints() -> None:
    slices = [
        _slice(
            [
                {
                    "ip": "10.77.0.2",
                    "pod": "b",
                    "ready": False,
                    "serving": True,
                    "terminating": True,
                },
                {
                    "ip": "10.77.0.3",
                    "pod": "c",
                    "ready": False,
                    "serving": False,
                    "terminating": True,
                },
            ]
        )
    ]
    assert [e.pod for e in rotation(endpoints_of(slices, "http"))] == ["b"]


def test_unset_conditions_read_as_the_api_defines_them() -> None:
    (endpoint,) = endpoints_of([_slice([{"ip": "10.77.0.1", "pod": "a"}])], "http")
    assert endpoint == SliceEndpoint("10.77.0.1", 8080, "a", True, True, False)


def test_pod_stages_split_pods_by_the_runner_annotation(tmp_path: Path) -> None:
    stages = {p.name: yaml.safe_load(p.read_text()) for p in write_pod_stages(tmp_path)}
    annotation = f'.metadata.annotations["{RUNNER_ANNOTATION}"]'

    def operator(stage: dict[str, Any]) -> str:
        (match,) = [
            e for e in stage["spec"]["selector"]["matchExpressions"] if e["key"] == annotation
        ]
        return str(match["operator"])

    assert operator(stages["pod-ready.yaml"]) == "DoesNotExist"
    assert operator(stages["pod-running-not-ready.yaml"]) == "Exists"
    assert operator(stages["pod-delete.yaml"]) == "DoesNotExist"
    assert operator(stages["pod-delete-after-grace.yaml"]) == "Exists"
    not_ready = stages["pod-running-not-ready.yaml"]["spec"]["next"]["statusTemplate"]
    assert 'status: "False"\n  type: Ready' in not_ready
    assert "phase: Running" in not_ready
    assert "podIP:" in not_ready
    ready = stages["pod-ready.yaml"]["spec"]["next"]["statusTemplate"]
    assert 'status: "True"\n  type: Ready' in ready
    grace = stages["pod-delete-after-grace.yaml"]["spec"]["delay"]["durationFrom"]
    assert grace == {"expressionFrom": ".metadata.deletionTimestamp"}
    assert "delay" not in stages["pod-delete.yaml"]["spec"]
