"""Following a Service: parsing service:// targets, and the ready endpoints with their versions."""

from __future__ import annotations

from typing import Any

import pytest

from autocanary.apps.probe import parse_target_arg
from autocanary.apps.probe_service import AddressMap, Backend, ServiceRef, backends


def test_a_service_target_parses_into_its_service_and_in_cluster_url() -> None:
    ref = ServiceRef.parse("service://shop/web:http/items?x=1")
    assert ref == ServiceRef("shop", "web", "http", "/items?x=1")
    assert ref.url == "http://web.shop.svc/items?x=1"
    assert ServiceRef.parse("service://shop/web") == ServiceRef("shop", "web", None, "/")
    target = parse_target_arg("web=service://shop/web:8080/", 10.0, 2.0)
    assert target.service == ServiceRef("shop", "web", "8080", "/")
    assert target.endpoint.host == "web.shop.svc"
    assert parse_target_arg("http://web/", 10.0, 2.0).service is None


@pytest.mark.parametrize("text", ["service://Shop/web", "service://shop", "service://shop/web:"])
def test_a_malformed_service_target_says_the_form(text: str) -> None:
    with pytest.raises(ValueError, match=r"service://NAMESPACE/NAME\[:PORT\]\[/PATH\]"):
        ServiceRef.parse(text)


def endpoint(pod: str, address: str, ready: bool | None = True) -> dict[str, Any]:
    conditions = {} if ready is None else {"ready": ready}
    return {
        "addresses": [address],
        "conditions": conditions,
        "targetRef": {"kind": "Pod", "name": pod},
    }


SLICES = [
    {
        "ports": [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9090}],
        "endpoints": [
            endpoint("web-1", "10.0.0.1"),
            endpoint("web-canary-1", "10.0.0.2"),
            endpoint("web-2", "10.0.0.3", ready=False),  # terminating or not Ready: no traffic
            endpoint(
                "web-3", "10.0.0.4", ready=None
            ),  # no condition: ready, as kube-proxy reads it
        ],
    },
    {"ports": [{"name": "http", "port": 8081}], "endpoints": [endpoint("gone", "10.0.0.9")]},
]
PODS = {
    "web-1": {"version": "v1"},
    "web-3": {"version": "v1"},
    "web-canary-1": {"version": "v2", "track": "canary"},
}


def test_ready_endpoints_carry_their_pods_version() -> None:
    assert backends(SLICES, PODS, "http", "version") == (
        Backend("gone", "10.0.0.9", 8081, "unknown"),  # its pod is not (yet) known
        Backend("web-1", "10.0.0.1", 8080, "v1"),
        Backend("web-3", "10.0.0.4", 8080, "v1"),
        Backend("web-canary-1", "10.0.0.2", 8080, "v2"),
    )


def test_the_port_by_number_or_the_first_one() -> None:
    by_number = backends(SLICES, PODS, "9090", "version")
    assert {b.port for b in by_number} == {9090}
    first = backends(SLICES, PODS, None, "version")
    assert {(b.pod, b.port) for b in first} >= {("web-1", 8080), ("gone", 8081)}
    assert backends(SLICES, PODS, "grpc", "version") == ()
    assert {b.version for b in backends(SLICES, PODS, "http", "track")} == {"unknown", "canary"}


def test_an_address_map_moves_addresses_of_one_network_into_another() -> None:
    twins = AddressMap.parse("10.64.0.0/16=127.64.0.0/16")
    assert twins.apply("10.64.3.7") == "127.64.3.7"
    assert twins.apply("10.65.3.7") == "10.65.3.7"
    assert twins.apply("web.shop.svc") == "web.shop.svc"
    moved = backends(SLICES, PODS, "http", "version", AddressMap.parse("10.0.0.0/24=127.0.9.0/24"))
    assert {b.address for b in moved} == {"127.0.9.1", "127.0.9.2", "127.0.9.4", "127.0.9.9"}
    for bad in ("10.0.0.0/16", "10.0.0.0/16=127.0.0.0/24", "x=y"):
        with pytest.raises(ValueError, match="FROM_CIDR=TO_CIDR"):
            AddressMap.parse(bad)
