"""ServiceProxy backend addresses (pure parsing; the proxy itself is tested in integration)."""

from __future__ import annotations

import pytest

from autocanary_testbed.serviceproxy import ServiceProxy, parse_backend


def test_parse_backend_splits_host_and_port() -> None:
    assert parse_backend("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_backend("[::1]:9000") == ("::1", 9000)
    assert parse_backend("localhost:1") == ("localhost", 1)


@pytest.mark.parametrize("text", ["127.0.0.1", ":80", "host:", "host:0", "host:65536", "host:http"])
def test_parse_backend_refuses_with_the_expected_form(text: str) -> None:
    with pytest.raises(ValueError, match="host:port with a port in 1-65535"):
        parse_backend(text)


def test_set_backends_keeps_the_old_list_when_one_entry_is_invalid() -> None:
    proxy = ServiceProxy()
    proxy.set_backends(["127.0.0.1:8080"])
    with pytest.raises(ValueError, match="'nope'"):
        proxy.set_backends(["127.0.0.1:8081", "nope"])
    assert proxy.backends == ["127.0.0.1:8080"]
