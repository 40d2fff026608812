"""Notifier against real receivers: local HTTP servers on 127.0.0.1 and the real Alertmanager."""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from autocanary.adapters.notify import Backoff, Notifier, slack_payload, webhook_payload
from autocanary.analysis.verdict import CheckSummary
from autocanary.config.models import AlertKind, AlertmanagerSink, Sink, SlackSink, WebhookSink
from autocanary.daemon.metrics import DaemonMetrics
from autocanary.rollout.alert import Alert
from autocanary.rollout.state import Reason
from autocanary_testbed.monitoring import AlertmanagerServer

pytestmark = pytest.mark.integration

WAIT_S = 30.0  # a bound for a hang, not a timing expectation
TINY = Backoff(initial=0.01, maximum=0.05)
# What a Slack-style URL hides; it must never reach a log line.
TOKEN = "xoxSECRETtoken1234"


def rolled_back() -> Alert:
    """A rollback happening now (Alertmanager lists only alerts that have not ended)."""
    return Alert(
        kind=AlertKind.ROLLED_BACK,
        reason=Reason.ROLLED_BACK,
        rollout="checkout",
        namespace="shop",
        revision="5f7c9d2a",
        canary_version="v2",
        stable_version="v1",
        step=2,
        total_steps=4,
        message="error-rate above 1% for 3 intervals",
        at=datetime.now(UTC),
        checks=(
            CheckSummary(
                name="error-rate", verdict="fail", value=0.05, threshold="max 1%", reason="above"
            ),
        ),
    )


@dataclass
class Received:
    """One request a receiver got."""

    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Receiver:
    """A ThreadingHTTPServer on 127.0.0.1 recording POSTs.

    It answers each request with the next of ``statuses`` (200 when none are
    left); with ``hold`` set it answers nothing until the test opens ``release``.
    """

    statuses: list[int] = field(default_factory=list)
    hold: bool = False
    requests: queue.Queue[Received] = field(default_factory=queue.Queue)
    entered: queue.Queue[str] = field(default_factory=queue.Queue)
    release: threading.Event = field(default_factory=threading.Event)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver.entered.put(self.path)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.hold:
                    receiver.release.wait(WAIT_S)
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                receiver.requests.put(Received(self.path, dict(self.headers), json.loads(body)))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: pytest shows stderr of failed tests, and this is noise there."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.release.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    """Started receivers are appended here by ``start_receiver``; all stopped after the test."""
    started: list[Receiver] = []
    yield started
    for receiver in started:
        receiver.stop()


def start_receiver(receivers: list[Receiver], **kw: Any) -> Receiver:
    receiver = Receiver(**kw)
    receiver.start()
    receivers.append(receiver)
    return receiver


def deliveries(metrics: DaemonMetrics, sink: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "autocanary_alert_deliveries_total", {"sink": sink, "outcome": outcome}
    )
    return value or 0.0


def test_webhook_and_slack_payloads_reach_a_real_receiver(receivers: list[Receiver]) -> None:
    receiver = start_receiver(receivers)
    sinks: list[Sink] = [
        WebhookSink.model_validate(
            {"type": "webhook", "name": "hook", "url": f"{receiver.url}/hook"}
        ),
        SlackSink.model_validate(
            {"type": "slack", "name": "chat", "url": f"{receiver.url}/services/T0/B0/{TOKEN}"}
        ),
    ]
    metrics = DaemonMetrics()
    alert = rolled_back()
    with Notifier(sinks, metrics=metrics, backoff=TINY) as notifier:
        notifier.notify(alert)
        assert notifier.flush(WAIT_S)

    got = {r.path: r for r in (receiver.requests.get_nowait() for _ in range(2))}
    assert got["/hook"].body == webhook_payload(alert)
    assert got[f"/services/T0/B0/{TOKEN}"].body == slack_payload(alert)
    for request in got.values():
        assert request.headers["Content-Type"] == "application/json"
    assert deliveries(metrics, "hook", "ok") == 1
    assert deliveries(metrics, "chat", "ok") == 1


def test_secret_urls_from_env_and_file_are_used_and_never_logged(
    receivers: list[Receiver],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The first answer is a 503, so retry and failure paths log too.
    receiver = start_receiver(receivers, statuses=[503])
    monkeypatch.setenv("AUTOCANARY_TEST_HOOK_URL", f"{receiver.url}/env/{TOKEN}")
    secret_file = tmp_path / "slack-url"
    secret_file.write_text(f"{receiver.url}/file/{TOKEN}\n")
    sinks: list[Sink] = [
        WebhookSink.model_validate(
            {"type": "webhook", "name": "from-env", "url": {"env": "AUTOCANARY_TEST_HOOK_URL"}}
        ),
        SlackSink.model_validate(
            {"type": "slack", "name": "from-file", "url": {"file": str(secret_file)}}
        ),
    ]
    caplog.set_level(logging.DEBUG)
    metrics = DaemonMetrics()
    with (
        structlog.testing.capture_logs() as events,
        Notifier(sinks, metrics=metrics, backoff=TINY) as notifier,
    ):
        notifier.notify(rolled_back())
        assert notifier.flush(WAIT_S)

    # Three requests: one sink's first attempt got the 503 and its retry got through.
    paths = [receiver.requests.get_nowait().path for _ in range(3)]
    assert set(paths) == {f"/env/{TOKEN}", f"/file/{TOKEN}"}
    assert deliveries(metrics, "from-env", "ok") == 1
    assert deliveries(metrics, "from-file", "ok") == 1
    assert any(e["event"] == "alert delivery attempt failed, retrying" for e in events)
    delivered = sorted(e["sink"] for e in events if e["event"] == "alert delivered")
    assert delivered == ["from-env", "from-file"]

    # httpx logged each request, with the URL cut down to scheme and host.
    httpx_lines = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert len(httpx_lines) == 3
    assert all(f"{receiver.url}/<redacted>" in line for line in httpx_lines)
    assert TOKEN not in caplog.text
    assert TOKEN not in "\n".join(r.getMessage() for r in caplog.records)
    assert TOKEN not in repr(events)


def test_a_hanging_sink_delays_neither_the_caller_nor_other_sinks(
    receivers: list[Receiver],
) -> None:
    slow = start_receiver(receivers, hold=True)
    fast = start_receiver(receivers)
    sinks = [
        # Listed first, and with a timeout far beyond the test: it answers only when released.
        WebhookSink.model_validate(
            {"type": "webhook", "name": "slow", "url": f"{slow.url}/hook", "timeout": "5m"}
        ),
        WebhookSink.model_validate({"type": "webhook", "name": "fast", "url": f"{fast.url}/hook"}),
    ]
    metrics = DaemonMetrics()
    with Notifier(sinks, metrics=metrics, backoff=TINY) as notifier:
        notifier.notify(rolled_back())  # returns although "slow" will not answer
        assert slow.entered.get(timeout=WAIT_S) == "/hook"
        assert fast.requests.get(timeout=WAIT_S).path == "/hook"
        # "fast" got its alert while "slow" is still inside its POST.
        assert not slow.release.is_set()
        assert deliveries(metrics, "slow", "ok") + deliveries(metrics, "slow", "failed") == 0
        slow.release.set()
        assert notifier.flush(WAIT_S)
    assert deliveries(metrics, "slow", "ok") == 1
    assert deliveries(metrics, "fast", "ok") == 1


def test_a_sink_that_never_answers_times_out_and_is_counted_failed(
    receivers: list[Receiver],
) -> None:
    silent = start_receiver(receivers, hold=True)
    sink = WebhookSink.model_validate(
        {"type": "webhook", "name": "silent", "url": silent.url, "timeout": "200ms", "retries": 1}
    )
    metrics = DaemonMetrics()
    with (
        structlog.testing.capture_logs() as events,
        Notifier([sink], metrics=metrics, backoff=TINY) as notifier,
    ):
        notifier.notify(rolled_back())
        assert notifier.flush(WAIT_S)

    assert [silent.entered.get_nowait() for _ in range(2)] == ["/", "/"]
    (failed,) = [e for e in events if e["event"] == "alert delivery failed"]
    assert failed["attempts"] == 2
    # The socket's read timeout or, when it comes first, the attempt's wall-clock deadline.
    assert failed["error"].startswith(("ReadTimeout", "DeadlineExceeded"))
    assert deliveries(metrics, "silent", "failed") == 1


def test_alertmanager_lists_the_posted_alert_with_its_labels(
    alertmanager: AlertmanagerServer,
) -> None:
    sink = AlertmanagerSink.model_validate(
        {
            "type": "alertmanager",
            "name": "am",
            "url": alertmanager.url,
            "labels": {"team": "payments", "severity": "ignored"},
            "on": ["rolledBack", "promoted"],
        }
    )
    metrics = DaemonMetrics()
    rollback = rolled_back()
    promoted = replace(
        rollback, kind=AlertKind.PROMOTED, reason=Reason.PROMOTED, step=None, checks=()
    )
    with Notifier([sink], metrics=metrics, backoff=TINY) as notifier:
        notifier.notify(rollback)
        notifier.notify(promoted)
        assert notifier.flush(WAIT_S)
    assert deliveries(metrics, "am", "ok") == 2

    with httpx.Client(trust_env=False, timeout=10) as http:
        response = http.get(
            f"{alertmanager.url}/api/v2/alerts", params={"filter": 'rollout="checkout"'}
        )
    response.raise_for_status()
    listed = {a["labels"]["alertname"]: a for a in response.json()}
    assert listed.keys() == {"AutocanaryRolledBack", "AutocanaryPromoted"}
    got = listed["AutocanaryRolledBack"]
    assert got["labels"] == {
        "alertname": "AutocanaryRolledBack",
        "rollout": "checkout",
        "namespace": "shop",
        "reason": "RolledBack",
        "severity": "critical",
        "team": "payments",
    }
    assert got["status"]["state"] == "active"
    assert got["annotations"]["summary"] == "RolledBack: shop/checkout canary v2 (stable v1)"
    assert "- error-rate: fail" in got["annotations"]["description"]
    starts = datetime.fromisoformat(got["startsAt"])
    ends = datetime.fromisoformat(got["endsAt"])
    assert abs(starts - rollback.at).total_seconds() < 0.001
    assert (ends - starts).total_seconds() == pytest.approx(24 * 3600, abs=0.001)
    info = listed["AutocanaryPromoted"]
    assert info["labels"]["severity"] == "info"
    ends = datetime.fromisoformat(info["endsAt"])
    starts = datetime.fromisoformat(info["startsAt"])
    assert (ends - starts).total_seconds() == pytest.approx(600, abs=0.001)


def test_alertmanager_rejection_is_final(alertmanager: AlertmanagerServer) -> None:
    # A label name with a dash is invalid in Prometheus' data model; Alertmanager answers 400.
    # Config validation refuses such a name at load, so build the sink past it: this is
    # about how a 400 from the real Alertmanager is handled, whatever caused it.
    valid = AlertmanagerSink.model_validate(
        {"type": "alertmanager", "name": "am", "url": alertmanager.url, "retries": 5}
    )
    sink = valid.model_copy(update={"labels": {"bad-name": "x"}})
    metrics = DaemonMetrics()
    with (
        structlog.testing.capture_logs() as events,
        Notifier([sink], metrics=metrics, backoff=TINY) as notifier,
    ):
        notifier.notify(rolled_back())
        assert notifier.flush(WAIT_S)

    (failed,) = [e for e in events if e["event"] == "alert delivery failed"]
    assert (failed["attempts"], failed["status"], failed["why"]) == (1, 400, "not retryable")
    assert deliveries(metrics, "am", "failed") == 1
