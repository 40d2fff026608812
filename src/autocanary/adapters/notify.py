"""Alert delivery: routes each alert to its sinks and sends it without ever blocking the caller.

Every sink has its own bounded queue and worker thread, so a slow or failing
sink delays neither the daemon's tick nor the other sinks. A delivery:

1. reads the sink's URL from its secret source (env, file or literal) at send
   time, so a rotated secret is picked up; a missing secret fails at once;
2. POSTs the sink's payload (:mod:`autocanary.adapters.notify_payloads`), its
   ``timeout`` bounding each of connect, send and read: the webhook JSON, a
   Slack message, or Alertmanager alerts to ``<url>/api/v2/alerts`` (the URL is
   Alertmanager's base; a URL already ending in that path is kept);
3. retries transport errors, timeouts, 408, 429 and 5xx up to the sink's
   ``retries`` with exponential backoff and jitter (:class:`Backoff`), waiting
   as long as ``Retry-After`` asks when that is no longer than the backoff
   ceiling; any other answer outside 2xx is final;
4. counts the outcome in ``autocanary_alert_deliveries{sink, outcome}``
   (``ok``, ``failed``, or ``dropped`` when a full queue or shutdown discards it)
   and logs one line with sink, kind, rollout, attempts and status.

Each sink queues at most ``queue_size`` alerts. When full, the oldest queued
non-critical alert is dropped, then a non-critical newcomer, and only when
everything is critical the oldest critical one: memory stays bounded and
rollbacks are the last to go.

URLs may carry a token, so they are never logged: our log lines name the sink
and the secret's source only, and the lines httpx itself logs from the worker
threads have the URL cut down to scheme and host.
"""

from __future__ import annotations

import collections
import email.utils
import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Literal, Protocol, Self

import httpx
import structlog
from prometheus_client import Counter

from autocanary.adapters.deadline import DeadlineExceeded, DeadlineRunner
from autocanary.adapters.notify_payloads import alertmanager_payload, slack_payload, webhook_payload
from autocanary.config.models import AlertKind, AlertmanagerSink, Sink, SlackSink, WebhookSink
from autocanary.rollout.alert import Alert

__all__ = [
    "Backoff",
    "DeliveryState",
    "Notifier",
    "alertmanager_payload",
    "parse_retry_after",
    "slack_payload",
    "webhook_payload",
]

log = structlog.get_logger(__name__)

Outcome = Literal["ok", "failed", "dropped"]
#: Where an alert sent with a key stands at one sink: waiting or being sent
#: (``queued``), delivered (``ok``), refused for good (``rejected``: a 4xx, a
#: missing secret), or worth sending again (``failed`` after its retries,
#: ``dropped`` from a full queue).
DeliveryState = Literal["queued", "ok", "rejected", "failed", "dropped"]

_ALERTMANAGER_PATH = "/api/v2/alerts"
_RETRYABLE_STATUS = frozenset({408, 429})
_USER_AGENT = "autocanary"


@dataclass(frozen=True)
class Backoff:
    """Waits between attempts: ``initial`` seconds doubling per retry up to ``maximum``.

    Each wait is jittered between half and all of its ceiling so that sinks
    failing together do not retry in lockstep.
    """

    initial: float = 1.0
    maximum: float = 30.0

    def __post_init__(self) -> None:
        """Reject waits that would spin (non-positive) or shrink (maximum below initial)."""
        if not 0 < self.initial <= self.maximum:
            raise ValueError(
                f"expected 0 < initial <= maximum, got initial={self.initial} "
                f"maximum={self.maximum}"
            )

    def delay(self, retry: int, jitter: float, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1-based).

        ``jitter`` in [0, 1) picks the point between half and all of the ceiling.
        A server's ``retry_after`` is obeyed when it is at most ``maximum``;
        a longer one is not worth holding the sink's queue for, so the normal
        backoff applies.
        """
        if retry_after is not None and retry_after <= self.maximum:
            return retry_after
        ceiling = min(self.maximum, self.initial * 2.0 ** min(retry - 1, 32))
        return ceiling * (0.5 + jitter / 2)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or HTTP-date); None if unusable."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - now).total_seconds())


class DeliveryMetrics(Protocol):
    """Where deliveries are counted: the daemon's ``DaemonMetrics`` (by sink and outcome)."""

    @property
    def alert_deliveries(self) -> Counter:
        """Alert deliveries by ``sink`` and ``outcome``."""
        ...


class Notifier:
    """Sends alerts to the configured sinks from background threads; see the module docstring.

    Use as a context manager, or call :meth:`close` when done.
    """

    def __init__(
        self,
        sinks: Sequence[Sink],
        *,
        metrics: DeliveryMetrics | None = None,
        transport: httpx.BaseTransport | None = None,
        backoff: Backoff | None = None,
        queue_size: int = 100,
    ) -> None:
        """Start one worker thread per sink.

        ``transport`` replaces httpx's network transport (tests); ``queue_size``
        bounds the alerts waiting per sink.
        """
        if queue_size < 1:
            raise ValueError(f"expected a queue_size of at least 1, got {queue_size}")
        names = [sink.name for sink in sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"sink names must be unique, got {names}")
        _install_httpx_redaction()
        self._workers = {
            sink.name: _SinkWorker(
                sink,
                transport=transport,
                backoff=backoff or Backoff(),
                metrics=metrics,
                queue_size=queue_size,
            )
            for sink in sinks
        }

    def notify(self, alert: Alert, sink_names: Sequence[str] | None = None) -> None:
        """Queue ``alert`` for every sink whose ``on`` lists its kind; returns at once.

        ``sink_names`` (a rollout's ``alerts``) limits delivery to those sinks;
        None means every sink.
        """
        wanted = None if sink_names is None else set(sink_names)
        if wanted is not None and not wanted <= self._workers.keys():
            log.warning(
                "alert routed to unknown sinks",
                sinks=sorted(wanted - self._workers.keys()),
                kind=alert.kind,
                **alert.log_fields(),
            )
        for name, worker in self._workers.items():
            if alert.kind in worker.sink.on and (wanted is None or name in wanted):
                worker.submit(alert)

    def route(self, kind: AlertKind, sink_names: Sequence[str] | None = None) -> list[str]:
        """The sinks an alert of ``kind`` goes to, among ``sink_names`` (None: every sink)."""
        wanted = None if sink_names is None else set(sink_names)
        return [
            name
            for name, worker in self._workers.items()
            if kind in worker.sink.on and (wanted is None or name in wanted)
        ]

    def deliver(self, alert: Alert, sink_names: Sequence[str]) -> dict[str, DeliveryState]:
        """Send ``alert`` to the named sinks unless already queued or done there (by its ``id``).

        Returns each sink's state for the key. Callers keep a sink pending until
        it says ``ok`` or ``rejected`` and call again (for instance on their
        next tick): an alert that ``failed`` or was ``dropped`` is sent again,
        one that is on its way is not. A sink that is not configured (any more)
        answers ``rejected``.
        """
        states: dict[str, DeliveryState] = {}
        for name in sink_names:
            worker = self._workers.get(name)
            states[name] = "rejected" if worker is None else worker.submit(alert, alert.id or None)
        return states

    def flush(self, timeout: float) -> bool:
        """Wait until every queued alert was delivered or given up; False on timeout."""
        deadline = time.monotonic() + timeout
        return all(w.wait_idle(deadline - time.monotonic()) for w in self._workers.values())

    def close(self, timeout: float = 10.0) -> bool:
        """Flush for up to ``timeout`` seconds, then stop the workers.

        Retries still waiting are abandoned and alerts still queued are counted
        as dropped. Returns True when everything was flushed and every worker
        stopped in time. Alerts queued after this are dropped.
        """
        deadline = time.monotonic() + timeout
        flushed = self.flush(timeout)
        for worker in self._workers.values():
            worker.request_stop()
        stopped = all(w.join(deadline - time.monotonic()) for w in self._workers.values())
        return flushed and stopped

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_RANK: dict[str, int] = {"critical": 0, "warning": 1, "info": 2}
#: Delivery states kept per sink for alerts sent with a key (see :meth:`Notifier.deliver`).
_REMEMBERED = 1000


@dataclass
class _Item:
    """A queued alert: its key (if any), attempts made, and when it may be tried next."""

    alert: Alert
    key: str | None
    seq: int
    attempts: int = 0
    not_before: float = 0.0
    status: int | None = None
    error: str | None = None

    def order(self) -> tuple[int, int]:
        # Critical first, then oldest first: a rollback never waits behind
        # retries of an earlier, lesser alert.
        return (_RANK[self.alert.severity], self.seq)


class _SinkWorker:
    """One sink's queue and the thread that delivers from it."""

    def __init__(
        self,
        sink: Sink,
        *,
        transport: httpx.BaseTransport | None,
        backoff: Backoff,
        metrics: DeliveryMetrics | None,
        queue_size: int,
    ) -> None:
        self.sink = sink
        self._backoff = backoff
        self._metrics = metrics
        self._queue_size = queue_size
        self._queue: list[_Item] = []
        self._seq = 0
        self._states: collections.OrderedDict[str, DeliveryState] = collections.OrderedDict()
        self._cond = threading.Condition()
        self._busy = False
        self._stopping = False
        # Jitter only spreads retries out; it needs no cryptographic quality.
        self._random = random.Random()  # noqa: S311
        self._http = httpx.Client(
            transport=transport,
            timeout=sink.timeout.total_seconds(),
            headers={"User-Agent": _USER_AGENT},
        )
        self._runner = DeadlineRunner(f"notify-{sink.name}", max_stuck=4)
        self._log = log.bind(sink=sink.name, sink_type=sink.type)
        self._thread = threading.Thread(
            target=self._run, name=f"autocanary-notify-{sink.name}", daemon=True
        )
        self._thread.start()

    def state_of(self, key: str) -> DeliveryState | None:
        """Where the alert sent with ``key`` stands, or None if this worker never saw it."""
        with self._cond:
            return self._states.get(key)

    def submit(self, alert: Alert, key: str | None = None) -> DeliveryState:
        """Queue ``alert``; when the queue is full, drop the oldest non-critical alert.

        With ``key``, an alert already queued, being sent or delivered is not
        queued again; one that failed or was dropped is.
        """
        with self._cond:
            known = self._states.get(key) if key is not None else None
            if known in ("queued", "ok", "rejected"):
                return known
            if self._stopping:
                dropped: _Item | None = _Item(alert, key, self._seq)
            else:
                self._seq += 1
                item = _Item(alert, key, self._seq)
                dropped = self._make_room(item) if len(self._queue) >= self._queue_size else None
                if dropped is not item:
                    self._queue.append(item)
                    self._remember(key, "queued")
                    self._cond.notify_all()
            if dropped is not None:
                self._remember(dropped.key, "dropped")
        if dropped is not None:
            self._count("dropped")
            self._log.warning(
                "alert dropped",
                why="notifier closed" if self._stopping else "queue full",
                kind=dropped.alert.kind,
                **dropped.alert.log_fields(),
            )
        return "dropped" if dropped is not None and dropped.key == key else "queued"

    def _remember(self, key: str | None, state: DeliveryState) -> None:
        # Called with the lock held.
        if key is None:
            return
        self._states[key] = state
        self._states.move_to_end(key)
        while len(self._states) > _REMEMBERED:
            self._states.popitem(last=False)

    def _make_room(self, incoming: _Item) -> _Item:
        # Called with the lock held and the queue full. Critical alerts
        # (rollbacks) are the last to go: the oldest non-critical queued alert
        # goes first, then a non-critical newcomer, then the oldest critical one.
        for queued in sorted(self._queue, key=lambda i: i.seq):
            if queued.alert.severity != "critical":
                self._queue.remove(queued)
                return queued
        if incoming.alert.severity != "critical":
            return incoming
        oldest = min(self._queue, key=lambda i: i.seq)
        self._queue.remove(oldest)
        return oldest

    def wait_idle(self, timeout: float) -> bool:
        """Wait until the queue is empty and no delivery is in progress; False on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._queue and not self._busy, timeout=max(0.0, timeout)
            )

    def request_stop(self) -> None:
        """Ask the thread to finish its current delivery and exit."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def join(self, timeout: float) -> bool:
        """Wait for the thread to exit; True if it did."""
        self._thread.join(max(0.0, timeout))
        return not self._thread.is_alive()

    def _run(self) -> None:
        _redacting.active = True
        try:
            while (item := self._next()) is not None:
                try:
                    self._attempt_item(item)
                finally:
                    with self._cond:
                        self._busy = False
                        self._cond.notify_all()
        finally:
            self._http.close()
            with self._cond:
                abandoned, self._queue = sorted(self._queue, key=lambda i: i.seq), []
                for item in abandoned:
                    self._remember(item.key, "failed" if item.attempts else "dropped")
                self._cond.notify_all()
            for item in abandoned:
                if item.attempts:
                    self._count("failed")
                    self._log.error(
                        "alert delivery failed",
                        kind=item.alert.kind,
                        **item.alert.log_fields(),
                        attempts=item.attempts,
                        status=item.status,
                        error=item.error,
                        why="shutting down",
                    )
                else:
                    self._count("dropped")
                    self._log.warning(
                        "alert dropped",
                        why="notifier closed",
                        kind=item.alert.kind,
                        **item.alert.log_fields(),
                    )

    def _next(self) -> _Item | None:
        """The most urgent item that may be tried now; waits for one (None when stopping)."""
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                ready = [i for i in self._queue if i.not_before <= now]
                if ready:
                    item = min(ready, key=_Item.order)
                    self._queue.remove(item)
                    self._busy = True
                    return item
                waits = [i.not_before - now for i in self._queue]
                self._cond.wait(timeout=min(waits) if waits else None)
            return None

    def _attempt_item(self, item: _Item) -> None:
        """One attempt at ``item``: delivered, given up, or queued again for a retry."""
        alert = item.alert
        log = self._log.bind(kind=alert.kind, **alert.log_fields())
        item.attempts += 1
        try:
            url = self.sink.url.resolve()
        except ValueError as e:
            self._finish(item, "rejected")
            # No traceback: rendered with locals, it would show the secret.
            log.error("alert sink URL unavailable", source=self.sink.url.describe(), error=str(e))
            return
        try:
            status, error, retry_after = self._attempt(
                _endpoint(self.sink, url), _payload(self.sink, alert)
            )
        except Exception as e:  # noqa: BLE001 - a bug in one delivery must not kill the worker
            self._finish(item, "rejected")
            # No traceback: rendered with locals, it would show the URL.
            log.error("alert delivery crashed", error_type=type(e).__name__, error=str(e))
            return
        item.status, item.error = status, error
        if status is not None and 200 <= status < 300:
            self._finish(item, "ok")
            log.info("alert delivered", attempts=item.attempts, status=status)
            return
        retryable = status is None or status in _RETRYABLE_STATUS or status >= 500
        if not retryable or item.attempts > self.sink.retries:
            why = "not retryable" if not retryable else "retries exhausted"
            self._finish(item, "rejected" if not retryable else "failed")
            log.error(
                "alert delivery failed",
                attempts=item.attempts,
                status=status,
                error=error,
                why=why,
            )
            return
        delay = self._backoff.delay(item.attempts, self._random.random(), retry_after)
        log.warning(
            "alert delivery attempt failed, retrying",
            attempt=item.attempts,
            status=status,
            error=error,
            delay_s=round(delay, 3),
        )
        with self._cond:
            # Back in the queue, not slept on: a more urgent alert goes meanwhile.
            item.not_before = time.monotonic() + delay
            self._queue.append(item)
            self._cond.notify_all()

    def _finish(self, item: _Item, state: DeliveryState) -> None:
        with self._cond:
            self._remember(item.key, state)
        self._count("ok" if state == "ok" else "failed")

    def _attempt(self, url: str, body: object) -> tuple[int | None, str | None, float | None]:
        """One POST: (status, None, Retry-After seconds) or (None, error, None).

        The sink's ``timeout`` bounds the whole attempt in wall-clock time, not
        only each read: a receiver trickling its answer must not hold the queue.
        """
        seconds = self.sink.timeout.total_seconds()

        def post() -> httpx.Response:
            _redacting.active = True
            return self._http.post(url, json=body)

        try:
            response = self._runner.call(post, seconds)
        except DeadlineExceeded as e:
            return None, f"DeadlineExceeded: {e}", None
        except (httpx.TransportError, httpx.InvalidURL) as e:
            return None, _error_text(e, url), None
        retry_after = parse_retry_after(response.headers.get("Retry-After"), datetime.now(UTC))
        return response.status_code, None, retry_after

    def _count(self, outcome: Outcome) -> None:
        if self._metrics is not None:
            self._metrics.alert_deliveries.labels(self.sink.name, outcome).inc()


@dataclass(frozen=True)
class _Result:
    """How one delivery ended: after how many attempts, with which last answer, and why."""

    delivered: bool
    attempts: int
    status: int | None  # the last HTTP status; None when no answer came
    error: str | None  # the last transport error, URL-free
    why: str  # delivered, not retryable, retries exhausted, shutting down


def _payload(sink: Sink, alert: Alert) -> object:
    if isinstance(sink, WebhookSink):
        return webhook_payload(alert)
    if isinstance(sink, SlackSink):
        return slack_payload(alert)
    return alertmanager_payload(alert, sink.labels)


def _endpoint(sink: Sink, url: str) -> str:
    if isinstance(sink, AlertmanagerSink) and not url.rstrip("/").endswith(_ALERTMANAGER_PATH):
        return url.rstrip("/") + _ALERTMANAGER_PATH
    return url


def _error_text(error: Exception, url: str) -> str:
    # Errors about the URL itself may quote it; name only their type then.
    if isinstance(error, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return type(error).__name__
    message = str(error).replace(url, "<url>")
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


# ---- keeping URLs out of httpx's own log lines ----------------------------------------------

_redacting = threading.local()


def _redacted_url(url: httpx.URL) -> str:
    port = f":{url.port}" if url.port is not None else ""
    return f"{url.scheme}://{url.host}{port}/<redacted>"


class _RedactURLs(logging.Filter):
    """On notifier threads, cuts the URLs in httpx's log records down to scheme and host."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's URL arguments; never drops a record."""
        if getattr(_redacting, "active", False) and isinstance(record.args, tuple):
            record.args = tuple(
                _redacted_url(arg) if isinstance(arg, httpx.URL) else arg for arg in record.args
            )
        return True


_REDACT_FILTER = _RedactURLs()


def _install_httpx_redaction() -> None:
    # Filterer.addFilter ignores a filter it already has, so this is idempotent.
    logging.getLogger("httpx").addFilter(_REDACT_FILTER)
