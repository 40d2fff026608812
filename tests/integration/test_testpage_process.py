"""testpage as a real process on 127.0.0.1: answers, keep-alive, faults, metrics, drain."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from autocanary_testbed.apps import TestpageProcess, scrape, start_testpage
from autocanary_testbed.procs import ProcessGroup
from autocanary_testbed.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def group(tmp_workdir: Path) -> Iterator[ProcessGroup]:
    with ProcessGroup(tmp_workdir / "logs") as processes:
        yield processes


def http() -> httpx.Client:
    return httpx.Client(trust_env=False, timeout=10.0)


def read_answers(sock: socket.socket, count: int) -> list[bytes]:
    """Read ``count`` HTTP answers (Content-Length framed) from a raw socket."""
    buf = b""
    answers: list[bytes] = []
    while len(answers) < count:
        head_end = buf.find(b"\r\n\r\n")
        if head_end >= 0:
            head = buf[:head_end]
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            end = head_end + 4 + length
            if len(buf) >= end:
                answers.append(buf[:end])
                buf = buf[end:]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(answers)} answers"
        buf += chunk
    return answers


def test_root_names_the_version_and_the_address(group: ProcessGroup) -> None:
    page = start_testpage(group, "v1")
    with http() as client:
        answer = client.get(f"{page.url}/")
    assert answer.status_code == 200
    assert answer.text == "I am: 127.0.0.1, the version is: v1\n"
    assert answer.headers["x-version"] == "v1"
    assert "date" in answer.headers

    pinned = start_testpage(group, "v2", env={"POD_IP": "10.1.2.3"})
    with http() as client:
        assert client.get(f"{pinned.url}/").text == "I am: 10.1.2.3, the version is: v2\n"


def test_keep_alive_and_pipelined_requests_answer_in_order(group: ProcessGroup) -> None:
    page = start_testpage(group, "v1")
    with socket.create_connection(("127.0.0.1", page.port), timeout=10) as sock:
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        first, second, third = read_answers(sock, 3)
        assert first.startswith(b"HTTP/1.1 200 OK\r\n")
        assert first.endswith(b"the version is: v1\n")
        assert second.endswith(b"\r\n\r\nok\n")
        assert third.startswith(b"HTTP/1.1 404 ")
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        (last,) = read_answers(sock, 1)
        assert b"\r\nConnection: close\r\n" in last
        assert sock.recv(1) == b""


def test_other_methods_paths_and_head(group: ProcessGroup) -> None:
    page = start_testpage(group, "v1")
    with http() as client:
        head = client.head(f"{page.url}/")
        post = client.post(f"{page.url}/", content=b"payload")
        missing = client.get(f"{page.url}/missing")
    assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", "36")
    assert (post.status_code, post.headers["allow"]) == (405, "GET, HEAD")
    assert missing.status_code == 404


def test_metrics_count_requests_by_code_and_time_the_app_path(group: ProcessGroup) -> None:
    page = start_testpage(group, "v3")
    with http() as client:
        for _ in range(7):
            assert client.get(f"{page.url}/").status_code == 200
        client.get(f"{page.url}/missing")
    counts = {
        (labels["code"], labels["method"], labels["path"]): value
        for labels, value in scrape(f"{page.url}/metrics", "testpage_requests_total")
        if labels["version"] == "v3"
    }
    assert counts[("200", "GET", "/")] == 7
    assert counts[("500", "GET", "/")] == 0
    assert counts[("404", "GET", "other")] == 1
    timed = scrape(f"{page.url}/metrics", "testpage_request_duration_seconds_count")
    assert timed == [({"version": "v3"}, 7.0)]


def test_error_fault_answers_500_naming_the_version(group: ProcessGroup) -> None:
    page = start_testpage(group, "v2", env={"FAULT_ERROR_RATE": "1"})
    with http() as client:
        answers = [client.get(f"{page.url}/") for _ in range(20)]
        health = client.get(f"{page.url}/healthz")
    assert {a.status_code for a in answers} == {500}
    assert {a.headers["x-version"] for a in answers} == {"v2"}
    assert "the version is: v2" in answers[0].text
    assert health.status_code == 200  # faults touch only the application path


def test_partial_error_fault_is_reproducible_with_a_seed(group: ProcessGroup) -> None:
    env = {"FAULT_ERROR_RATE": "0.3", "FAULT_SEED": "11"}
    runs = []
    for _ in range(2):
        page = start_testpage(group, "v2", env=env)
        with http() as client:
            runs.append([client.get(f"{page.url}/").status_code for _ in range(200)])
    assert runs[0] == runs[1]
    assert set(runs[0]) == {200, 500}
    assert 0.2 < runs[0].count(500) / 200 < 0.4


def test_latency_fault_delays_every_app_answer(group: ProcessGroup) -> None:
    page = start_testpage(group, "v2", env={"FAULT_LATENCY": "200ms±20ms"})
    with http() as client:
        for _ in range(5):
            assert client.get(f"{page.url}/").status_code == 200
    buckets = {
        labels["le"]: value
        for labels, value in scrape(
            f"{page.url}/metrics", "testpage_request_duration_seconds_bucket"
        )
    }
    assert buckets["0.15"] == 0  # every answer waited at least 180ms
    assert buckets["+Inf"] == 5


def test_fault_after_keeps_the_instance_healthy_first(group: ProcessGroup) -> None:
    page = start_testpage(group, "v2", env={"FAULT_ERROR_RATE": "1", "FAULT_AFTER": "5s"})
    with http() as client:
        assert client.get(f"{page.url}/").status_code == 200
        wait_until(
            lambda: client.get(f"{page.url}/").status_code == 500,
            timeout=30,
            what="failing after FAULT_AFTER",
        )


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("FAULT_ERROR_RATE", "1.5", "expected a fraction between 0 and 1"),
        ("FAULT_LATENCY", "fast", "such as 200ms, optionally with a spread such as 200ms±50ms"),
        ("FAULT_AFTER", "later", "expected a duration such as 30s"),
        ("FAULT_SEED", "abc", "expected an integer"),
        ("VERSION", "v 1", "letters, digits or ._+-"),
        ("POD_IP", "10.1.2", "IPv4 or IPv6"),
    ],
)
def test_invalid_environment_is_refused_at_start(variable: str, value: str, expected: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "autocanary.apps.testpage", "--host", "127.0.0.1", "--port", "0"],
        env={**os.environ, variable: value},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert f"{variable}: " in result.stderr
    assert repr(value) in result.stderr
    assert expected in result.stderr


def test_sigterm_fails_readiness_keeps_serving_with_close_then_exits_0(
    group: ProcessGroup,
) -> None:
    page = start_testpage(group, "v1", drain_delay="60s")
    with socket.create_connection(("127.0.0.1", page.port), timeout=10) as idle:
        idle.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        read_answers(idle, 1)
        os.kill(page.process.pid, signal.SIGTERM)
        with http() as client:
            wait_until(
                lambda: client.get(f"{page.url}/healthz").status_code == 503,
                timeout=10,
                what="failing readiness",
            )
            during = client.get(f"{page.url}/")
        assert (during.status_code, during.headers["connection"]) == (200, "close")
        # A client reusing its kept-alive connection is served, then told to leave.
        idle.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        (answer,) = read_answers(idle, 1)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\nConnection: close\r\n" in answer
        assert idle.recv(1) == b""
    assert page.process.is_running()  # still inside its 60s drain delay
    os.kill(page.process.pid, signal.SIGTERM)  # a second signal ends the delay early
    wait_until(lambda: not page.process.is_running(), timeout=30, what="exited")
    assert page.process.returncode == 0


def test_sigterm_finishes_requests_in_flight(group: ProcessGroup) -> None:
    page: TestpageProcess = start_testpage(group, "v2", env={"FAULT_LATENCY": "1s"})
    answers: list[httpx.Response] = []

    def slow_get() -> None:
        with http() as client:
            answers.append(client.get(f"{page.url}/"))

    thread = threading.Thread(target=slow_get)
    thread.start()
    wait_until(
        lambda: scrape(f"{page.url}/metrics", "testpage_requests_waiting")[0][1] == 1,
        timeout=10,
        what="holding the slow request",
    )
    os.kill(page.process.pid, signal.SIGTERM)
    thread.join(30)
    wait_until(lambda: not page.process.is_running(), timeout=30, what="exited")
    assert page.process.returncode == 0
    assert [a.status_code for a in answers] == [200]
    assert answers[0].headers["connection"] == "close"
