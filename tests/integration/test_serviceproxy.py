"""ServiceProxy with real testpage backends: round robin, runtime changes, 503/502, stop."""

from __future__ import annotations

import gc
import socket
import threading
from collections import Counter

import httpx
import pytest

from autocanary_testbed.apps import start_testpage
from autocanary_testbed.errors import HarnessError
from autocanary_testbed.procs import ProcessGroup, free_port
from autocanary_testbed.serviceproxy import ServiceProxy
from autocanary_testbed.waiting import wait_until

pytestmark = pytest.mark.integration


def versions_of_fresh_connections(url: str, count: int) -> Counter[str]:
    """X-Version of ``count`` requests, each on its own connection (as the probe sends them)."""
    seen: Counter[str] = Counter()
    with httpx.Client(trust_env=False, timeout=10.0) as client:
        for _ in range(count):
            answer = client.get(f"{url}/", headers={"Connection": "close"})
            seen[answer.headers.get("x-version", f"status {answer.status_code}")] += 1
    return seen


def test_connections_alternate_over_backends(group: ProcessGroup, proxy: ServiceProxy) -> None:
    v1, v2 = start_testpage(group, "v1"), start_testpage(group, "v2")
    proxy.set_backends([v1.address, v2.address])
    assert versions_of_fresh_connections(proxy.url, 20) == {"v1": 10, "v2": 10}
    assert proxy.connection_counts() == {v1.address: 10, v2.address: 10}


def test_a_kept_alive_connection_stays_on_its_backend(
    group: ProcessGroup, proxy: ServiceProxy
) -> None:
    v1, v2 = start_testpage(group, "v1"), start_testpage(group, "v2")
    proxy.set_backends([v1.address, v2.address])
    with httpx.Client(trust_env=False, timeout=10.0) as client:
        seen = {client.get(f"{proxy.url}/").headers["x-version"] for _ in range(10)}
    assert len(seen) == 1  # balancing is per connection, as with kube-proxy


def test_backends_change_at_runtime(group: ProcessGroup, proxy: ServiceProxy) -> None:
    v1, v2 = start_testpage(group, "v1"), start_testpage(group, "v2")
    proxy.set_backends([v1.address])
    assert versions_of_fresh_connections(proxy.url, 4) == {"v1": 4}
    proxy.set_backends([v1.address, v2.address, v2.address])
    assert versions_of_fresh_connections(proxy.url, 6) == {"v1": 2, "v2": 4}
    proxy.set_backends([v2.address])
    assert versions_of_fresh_connections(proxy.url, 3) == {"v2": 3}
    assert proxy.backends == [v2.address]


def test_no_backend_answers_503_and_unreachable_backend_502(proxy: ServiceProxy) -> None:
    assert versions_of_fresh_connections(proxy.url, 2) == {"status 503": 2}
    proxy.set_backends([f"127.0.0.1:{free_port()}"])  # nothing listens there
    assert versions_of_fresh_connections(proxy.url, 2) == {"status 502": 2}


def test_stop_closes_the_listener_and_open_connections(group: ProcessGroup) -> None:
    page = start_testpage(group, "v1")
    proxy = ServiceProxy()
    proxy.start()
    proxy.set_backends([page.address])
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as held:
        held.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert held.recv(65536).startswith(b"HTTP/1.1 200 OK")
        proxy.stop()
        assert held.recv(1) == b""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=10).close()


def test_stop_under_load_leaves_no_socket_open(group: ProcessGroup) -> None:
    """Connections accepted or half-proxied at the moment of stop are all closed.

    A leaked socket raises ResourceWarning when collected, which pytest turns into an error.
    """
    page = start_testpage(group, "v1")
    proxy = ServiceProxy()
    proxy.start()
    proxy.set_backends([page.address])
    running = threading.Event()
    running.set()
    answered = [0] * 8

    def hammer(slot: int) -> None:
        while running.is_set():
            try:
                with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                    while sock.recv(65536):
                        pass
                answered[slot] += 1
            except OSError:
                pass  # refused once the proxy stopped listening

    threads = [threading.Thread(target=hammer, args=(slot,)) for slot in range(8)]
    for thread in threads:
        thread.start()
    wait_until(lambda: sum(answered) >= 200, timeout=30, what="proxying under load")
    proxy.stop()
    running.clear()
    for thread in threads:
        thread.join(30)
    gc.collect()
    assert sum(proxy.connection_counts().values()) >= 200


def test_start_on_a_busy_port_says_so() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(HarnessError, match=f"cannot listen on 127.0.0.1:{port}"):
            ServiceProxy(port=port).start()
