"""Notifier logic against httpx.MockTransport: routing, retry and backoff sequencing, the queue.

Real HTTP receivers and Alertmanager are in tests/integration/test_notify_sinks.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
import structlog

from autocanary.adapters.notify import (
    Backoff,
    Notifier,
    alertmanager_payload,
    parse_retry_after,
    slack_payload,
    webhook_payload,
)
from autocanary.config.models import AlertKind, AlertmanagerSink, SlackSink, WebhookSink
from autocanary.daemon.metrics import DaemonMetrics
from autocanary.rollout.alert import Alert
from autocanary.rollout.state import Reason

Events = list[MutableMapping[str, Any]]
TINY = Backoff(initial=0.001, maximum=0.004)
FLUSH_S = 30.0  # a bound for a stuck worker, not a timing expectation

ALERT = Alert(
    kind=AlertKind.ROLLED_BACK,
    reason=Reason.ROLLED_BACK,
    rollout="checkout",
    namespace="shop",
    revision="5f7c9d2a",
    canary_version="v2",
    stable_version="v1",
    step=2,
    total_steps=4,
    message="error-rate above 1%",
    at=datetime(2026, 5, 1, 12, 0, tzinfo=UTC),
)


def webhook(name: str, *, retries: int = 3, on: list[str] | None = None) -> WebhookSink:
    """A webhook sink POSTing to http://<name>.test/hook."""
    return WebhookSink.model_validate(
        {
            "type": "webhook",
            "name": name,
            "url": f"http://{name}.test/hook",
            "retries": retries,
            "on": on or ["rolledBack"],
        }
    )


@dataclass
class Server:
    """A MockTransport handler answering from a script and recording every request."""

    answers: list[httpx.Response | Exception] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request)
            answer = self.answers.pop(0) if self.answers else httpx.Response(200)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def hosts(self) -> list[str]:
        with self.lock:
            return [r.url.host for r in self.requests]


def deliveries(metrics: DaemonMetrics, sink: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "autocanary_alert_deliveries_total", {"sink": sink, "outcome": outcome}
    )
    return value or 0.0


def eventually(condition: Callable[[], bool]) -> None:
    """Wait for a worker thread to reach ``condition``; the bound only catches a hang."""
    deadline = time.monotonic() + FLUSH_S
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def events_named(events: Events, name: str) -> Events:
    return [e for e in events if e["event"] == name]


@pytest.fixture
def logs() -> Iterator[Events]:
    with structlog.testing.capture_logs() as events:
        yield events


@pytest.fixture
def run(
    logs: Events,
) -> Iterator[Callable[..., tuple[Notifier, Server, DaemonMetrics]]]:
    """``run(sinks, answers)`` builds a Notifier on a scripted MockTransport; closed after."""
    started: list[Notifier] = []

    def start(
        sinks: list[Any], answers: list[httpx.Response | Exception] | None = None, **kw: Any
    ) -> tuple[Notifier, Server, DaemonMetrics]:
        server = Server(answers=list(answers or []))
        metrics = DaemonMetrics()
        notifier = Notifier(
            sinks,
            metrics=metrics,
            transport=httpx.MockTransport(server),
            backoff=kw.pop("backoff", TINY),
            **kw,
        )
        started.append(notifier)
        return notifier, server, metrics

    yield start
    for notifier in started:
        notifier.close(timeout=FLUSH_S)


# ---- backoff and Retry-After, pure ----------------------------------------------------------


def test_backoff_doubles_up_to_the_maximum_with_jitter_between_half_and_all() -> None:
    backoff = Backoff(initial=1, maximum=8)
    assert [backoff.delay(n, jitter=0.0) for n in range(1, 7)] == [0.5, 1, 2, 4, 4, 4]
    assert [backoff.delay(n, jitter=1.0) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]
    assert backoff.delay(3, jitter=0.5) == 3.0


def test_backoff_obeys_a_small_retry_after_and_ignores_a_large_one() -> None:
    backoff = Backoff(initial=1, maximum=8)
    assert backoff.delay(1, jitter=0.0, retry_after=0.0) == 0.0
    assert backoff.delay(1, jitter=0.0, retry_after=7.0) == 7.0
    assert backoff.delay(1, jitter=0.0, retry_after=3600.0) == 0.5


@pytest.mark.parametrize(("initial", "maximum"), [(0, 1), (-1, 1), (2, 1)])
def test_backoff_rejects_spinning_or_shrinking_waits(initial: float, maximum: float) -> None:
    with pytest.raises(ValueError, match="expected 0 < initial <= maximum"):
        Backoff(initial=initial, maximum=maximum)


def test_parse_retry_after_seconds_dates_and_garbage() -> None:
    now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_retry_after("3", now) == 3.0
    assert parse_retry_after(" 0 ", now) == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=10), usegmt=True), now) == 10
    assert parse_retry_after(format_datetime(now - timedelta(minutes=1), usegmt=True), now) == 0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-5", now) is None
    assert parse_retry_after(None, now) is None


# ---- retries ---------------------------------------------------------------------------------


def test_5xx_is_retried_with_growing_delays_until_retries_run_out(
    run: Callable[..., tuple[Notifier, Server, DaemonMetrics]], logs: Events
) -> None:
    notifier, server, metrics = run(
        [webhook("a", retries=3)],
        [httpx.Response(503)] * 10,
        backoff=Backoff(initial=0.01, maximum=0.04),
    )
    notifier.notify(ALERT)
    assert notifier.flush(FLUSH_S)

    assert len(server.requests) == 4
    retries = events_named(logs, "alert delivery attempt failed, retrying")
    assert [e["attempt"] for e in retries] == [1, 2, 3]
    assert all(e["status"] == 503 for e in retries)
    # Ceilings 0.01, 0.02, 0.04 (doubling, capped); jitter keeps each in its upper half.
    assert 0.005 <= retries[0]["delay_s"] <= 0.01
    assert 0.01 <= retries[1]["delay_s"] <= 0.02
    assert 0.02 <= retries[2]["delay_s"] <= 0.04
    (failed,) = events_named(logs, "alert delivery failed")
    assert failed["attempts"] == 4
    assert failed["status"] == 503
    assert failed["why"] == "retries exhausted"
    assert failed["sink"] == "a"
    assert failed["kind"] == "rolledBack"
    assert failed["rollout"] == "checkout"
    assert deliveries(metrics, "a", "failed") == 1
    assert deliveries(metrics, "a", "ok") == 0


def test_recovers_after_transient_failures(
    run: Callable[..., tuple[Notifier, Server, DaemonMetrics]], logs: Events
) -> None:
    answers: list[httpx.Response | Exception] = [
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.Response(502),
        httpx.Response(408),
    ]
    notifier, server, metrics = run([webhook("a", retries=4)], answers)
    notifier.notify(ALERT)
    assert notifier.flush(FLUSH_S)

    assert len(server.requests) == 5
    retries = events_named(logs, "alert delivery attempt failed, retrying")
    assert [(e["status"], e["error"]) for e in retries] == [
        (None, "ConnectError: connection refused"),
        (None, "ReadTimeout: timed out"),
        (502, None),
        (408, None),
    ]
    (delivered,) = events_named(logs, "alert delivered")
    assert delivered["attempts"] == 5
    assert delivered["status"] == 200
    assert deliveries(metrics, "a", "ok") == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
def test_other_4xx_are_not_retried(
    run: Callable[..., tuple[Notifier, Server, DaemonMetrics]],
    logs: Events,
    status: int,
) -> None:
    notifier, server, metrics = run([webhook("a", retries=5)], [httpx.Response(status)] * 6)
    notifier.notify(ALERT)
    assert notifier.flush(FLUSH_S)

    assert len(server.requests) == 1
    assert events_named(logs, "alert delivery attempt failed, retrying") == []
    (failed,) = events_named(logs, "alert delivery failed")
    assert (failed["attempts"], failed["status"], failed["why"]) == (1, status, "not retryable")
    assert deliveries(metrics, "a", "failed") == 1


def test_429_waits_as_long_as_retry_after_asks(
    run: Callable[..., tuple[Notifier, Server, DaemonMetrics]], logs: Events
) -> None:
    answers: list[httpx.Response | Exception] = [
        httpx.Response(429, headers={"Retry-After": "0"}),
        httpx.Response(204),
    ]
    notifier, server, metrics = run(
        [webhook("a")], answers, backoff=Backoff(initial=0.001, maximum=1)
    )
    notifier.notify(ALERT)
    assert notifier.flush(FLUSH_S)

    (retry,) = events_named(logs, "alert delivery attempt failed, retrying")
    assert (retry["status"], retry["delay_s"]) == (429, 0)
    assert len(server.requests) == 2
    assert deliveries(metrics, "a", "ok") == 1


def test_no_retries_configured_means_one_attempt(
    run: Callable[..., tuple[Notifier, Server, DaemonMetrics]],
) -> None:
    notifier, server, metrics = run([webhook("a", retries=0)], [httpx.Response(500)])
    notifier.notify(ALERT)
    assert notifier.flush(FLUSH_S)
    assert len(server.requests) == 1
    assert deliveries(metrics, "a", "failed") == 1


# ---- routing and payloads --------------------------------------------------------------------


def test_routes_by_on_and_by_sink_names(
    run: Callable[..., tuple[Notifier, Server, DaemonMetrics]], logs: Events
) -> None:
    sinks = [
        webhook("a", on=["rolledBack"]),
        webhook("b", on=["rolledBack", "promoted"]),
        webhook("c", on=["paused"]),
    ]
    notifier, server, _ = run(sinks)
    promoted = replace(ALERT, kind=AlertKind.PROMOTED, reason=Reason.PROMOTED)

    notifier.notify(ALERT)
    assert notifier.flush(FLUSH_S)
    assert sorted(server.hosts()) == ["a.test", "b.test"]

    server.requests.clear()
    notifier.notify(promoted)
    notifier.notify(ALERT, sink_names=["b", "c"])
    notifier.notify(ALERT, sink_names=[])
    assert notifier.flush(FLUSH_S)
    assert server.hosts() == ["b.test", "b.test"]

    notifier.notify(ALERT, sink_names=["a", "nope"])
    assert notifier.flush(FLUSH_S)
    (unknown,) = events_named(logs, "alert routed to unknown sinks")
    assert unknown["sinks"] == ["nope"]
    assert server.hosts()[-1] == "a.test"


def test_each_sink_type_posts_its_payload(
    run: Callable[..., tuple[Notifier, Server, DaemonMetrics]],
) -> None:
    sinks = [
        webhook("hook"),
        SlackSink.model_validate(
            {"type": "slack", "name": "chat", "url": "https://hooks.slack.test/services/T/B/X"}
        ),
        AlertmanagerSink.model_validate(
            {
                "type": "alertmanager",
                "name": "am",
                "url": "http://am.test:9093/",
                "labels": {"a": "b"},
            }
        ),
        AlertmanagerSink.model_validate(
            {"type": "alertmanager", "name": "am-full", "url": "http://am2.test/api/v2/alerts"}
        ),
    ]
    notifier, server, _ = run(sinks)
    notifier.notify(ALERT)
    assert notifier.flush(FLUSH_S)

    by_host = {r.url.host: r for r in server.requests}
    assert by_host.keys() == {"hook.test", "hooks.slack.test", "am.test", "am2.test"}
    for request in by_host.values():
        assert request.method == "POST"
        assert request.headers["content-type"] == "application/json"
        assert request.headers["user-agent"] == "autocanary"
    assert json.loads(by_host["hook.test"].content) == webhook_payload(ALERT)
    assert by_host["hooks.slack.test"].url.path == "/services/T/B/X"
    assert json.loads(by_host["hooks.slack.test"].content) == slack_payload(ALERT)
    assert str(by_host["am.test"].url) == "http://am.test:9093/api/v2/alerts"
    assert json.loads(by_host["am.test"].content) == alertmanager_payload(ALERT, {"a": "b"})
    assert str(by_host["am2.test"].url) == "http://am2.test/api/v2/alerts"


def test_unresolvable_secret_fails_at_once_naming_its_source(
    run: Callable[..., tuple[Notifier, Server, DaemonMetrics]],
    logs: Events,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AUTOCANARY_TEST_UNSET_HOOK", raising=False)
    sink = WebhookSink.model_validate(
        {"type": "webhook", "name": "a", "url": {"env": "AUTOCANARY_TEST_UNSET_HOOK"}}
    )
    notifier, server, metrics = run([sink])
    notifier.notify(ALERT)
    assert notifier.flush(FLUSH_S)

    assert server.requests == []
    (event,) = events_named(logs, "alert sink URL unavailable")
    assert event["source"] == "env AUTOCANARY_TEST_UNSET_HOOK"
    assert event["log_level"] == "error"
    assert deliveries(metrics, "a", "failed") == 1


# ---- the queue -------------------------------------------------------------------------------


class Gate:
    """A MockTransport handler that holds the first request until opened."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.seen: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(json.loads(request.content)["message"])
        self.entered.set()
        assert self.opened.wait(FLUSH_S), "test never opened the gate"
        return httpx.Response(200)


def test_full_queue_drops_oldest_non_critical_first(logs: Events) -> None:
    gate = Gate()
    metrics = DaemonMetrics()
    every_kind = ["rolledBack", "promoted", "stepAdvanced"]
    sink = webhook("a", on=every_kind)

    def alert(kind: str, message: str) -> Alert:
        reason = kind[0].upper() + kind[1:]
        return replace(ALERT, kind=kind, reason=reason, message=message)  # type: ignore[arg-type]

    with Notifier(
        [sink], metrics=metrics, transport=httpx.MockTransport(gate), queue_size=2
    ) as notifier:
        notifier.notify(alert("rolledBack", "in flight"))
        assert gate.entered.wait(FLUSH_S)
        notifier.notify(alert("promoted", "info 1"))
        notifier.notify(alert("rolledBack", "critical 1"))
        notifier.notify(alert("stepAdvanced", "info 2"))  # full: drops "info 1"
        notifier.notify(alert("rolledBack", "critical 2"))  # full: drops "info 2"
        notifier.notify(alert("promoted", "info 3"))  # all queued are critical: drops itself
        notifier.notify(alert("rolledBack", "critical 3"))  # only criticals: drops "critical 1"
        gate.opened.set()
        assert notifier.flush(FLUSH_S)

    assert gate.seen == ["in flight", "critical 2", "critical 3"]
    dropped = events_named(logs, "alert dropped")
    assert [(e["kind"], e["why"]) for e in dropped] == [
        ("promoted", "queue full"),
        ("stepAdvanced", "queue full"),
        ("promoted", "queue full"),
        ("rolledBack", "queue full"),
    ]
    assert deliveries(metrics, "a", "dropped") == 4
    assert deliveries(metrics, "a", "ok") == 3


def test_notify_returns_while_a_delivery_is_stuck() -> None:
    gate = Gate()
    with Notifier([webhook("a")], transport=httpx.MockTransport(gate)) as notifier:
        notifier.notify(ALERT)
        assert gate.entered.wait(FLUSH_S)
        # The worker is inside the POST; queueing more returns at once and flush says so.
        notifier.notify(ALERT)
        assert not notifier.flush(0.05)
        gate.opened.set()
        assert notifier.flush(FLUSH_S)
    assert len(gate.seen) == 2


def test_close_abandons_waiting_retries_and_drops_later_alerts(logs: Events) -> None:
    metrics = DaemonMetrics()
    server = Server(answers=[httpx.Response(503)] * 10)
    notifier = Notifier(
        [webhook("a", retries=5)],
        metrics=metrics,
        transport=httpx.MockTransport(server),
        # Far longer than the test, so the worker is surely waiting when close() comes.
        backoff=Backoff(initial=3600, maximum=3600),
    )
    notifier.notify(ALERT)
    assert not notifier.flush(0.05)
    notifier.close(timeout=0.05)
    # close() cut the hour-long backoff short; the worker records that and exits.
    eventually(lambda: deliveries(metrics, "a", "failed") == 1)

    assert len(server.requests) == 1
    (failed,) = events_named(logs, "alert delivery failed")
    assert failed["why"] == "shutting down"
    notifier.notify(ALERT)
    assert deliveries(metrics, "a", "failed") == 1
    assert deliveries(metrics, "a", "dropped") == 1
    assert events_named(logs, "alert dropped")[0]["why"] == "notifier closed"


@pytest.mark.parametrize(
    ("sinks", "kw", "message"),
    [
        ([webhook("a"), webhook("a")], {}, "sink names must be unique"),
        ([webhook("a")], {"queue_size": 0}, "queue_size of at least 1"),
    ],
)
def test_rejects_duplicate_sinks_and_an_empty_queue(
    sinks: list[WebhookSink], kw: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Notifier(sinks, **kw)


# ---- at least once, by id; the most urgent first; a wall-clock bound per attempt ------------


def test_deliver_sends_an_id_once_while_queued_or_done_and_again_after_a_failure(
    run: Callable[..., tuple[Notifier, Server, DaemonMetrics]],
) -> None:
    notifier, server, _ = run(
        [webhook("a", retries=0), webhook("b", retries=0, on=["promoted"])],
        [httpx.Response(503)],
    )
    alert = replace(ALERT, id="checkout.5f7c9d2a.1.1")
    assert notifier.route("rolledBack") == ["a"]
    assert notifier.deliver(alert, ["a"]) == {"a": "queued"}
    assert notifier.flush(FLUSH_S)
    # Its one attempt failed: the next call (the engine's next tick) sends it again.
    assert notifier.deliver(alert, ["a", "gone"]) == {"a": "queued", "gone": "rejected"}
    assert notifier.flush(FLUSH_S)
    assert notifier.deliver(alert, ["a"]) == {"a": "ok"}
    assert notifier.flush(FLUSH_S)

    bodies = [json.loads(r.content) for r in server.requests]
    assert [b["id"] for b in bodies] == ["checkout.5f7c9d2a.1.1"] * 2


def test_a_rollback_goes_before_retries_of_lesser_alerts() -> None:
    # The lesser alert fails twice and waits a (long) second between attempts; the
    # rollback queued meanwhile must not wait behind those retries.
    seen: list[str] = []
    failures = {"step 2": 2}

    def handler(request: httpx.Request) -> httpx.Response:
        message = json.loads(request.content)["message"]
        seen.append(message)
        if failures.get(message, 0) > 0:
            failures[message] -= 1
            return httpx.Response(503)
        return httpx.Response(200)

    with Notifier(
        [webhook("a", retries=2, on=["rolledBack", "stepAdvanced"])],
        transport=httpx.MockTransport(handler),
        backoff=Backoff(initial=1.0, maximum=1.0),
    ) as notifier:
        lesser = replace(
            ALERT,
            kind=AlertKind.STEP_ADVANCED,
            reason=Reason.STEP_ADVANCED,
            message="step 2",
            id="s",
        )
        notifier.deliver(lesser, ["a"])
        eventually(lambda: len(seen) == 1)
        notifier.deliver(replace(ALERT, message="rolled back", id="r"), ["a"])
        assert notifier.flush(FLUSH_S)

    assert seen == ["step 2", "rolled back", "step 2", "step 2"]


def test_an_answer_trickling_past_the_timeout_is_a_failed_attempt(logs: Events) -> None:
    release = threading.Event()

    def trickle(request: httpx.Request) -> httpx.Response:
        # Stands for a receiver sending a byte now and then: no read ever times out.
        release.wait(FLUSH_S)
        return httpx.Response(200)

    sink = webhook("a", retries=0).model_copy(update={"timeout": timedelta(milliseconds=200)})
    metrics = DaemonMetrics()
    with Notifier([sink], metrics=metrics, transport=httpx.MockTransport(trickle)) as notifier:
        started = time.monotonic()
        notifier.deliver(replace(ALERT, id="x"), ["a"])
        eventually(lambda: deliveries(metrics, "a", "failed") == 1)
        waited = time.monotonic() - started
        release.set()
    (failed,) = events_named(logs, "alert delivery failed")
    assert failed["error"] == "DeadlineExceeded: no complete answer within 0.2s"
    assert waited < FLUSH_S
