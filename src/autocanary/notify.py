"""Alert delivery: routes each alert to its sinks and sends it without ever blocking the caller.

Every sink has its own bounded queue and worker thread, so a slow or failing
sink delays neither the daemon's tick nor the other sinks. A delivery:

1. reads the sink's URL from its secret source (env, file or literal) at send
   time, so a rotated secret is picked up; a missing secret fails at once;
2. POSTs the sink's payload (:mod:`autocanary.notify_payloads`), its
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
from typing import Any, Literal, Self

import httpx
import structlog

from autocanary.alert import Alert
from autocanary.config import AlertmanagerSink, Sink, SlackSink, WebhookSink
from autocanary.metrics import DaemonMetrics
from autocanary.notify_payloads import alertmanager_payload, slack_payload, webhook_payload

__all__ = [
    "Backoff",
    "Notifier",
    "alertmanager_payload",
    "parse_retry_after",
    "slack_payload",
    "webhook_payload",
]

log = structlog.get_logger(__name__)

Outcome = Literal["ok", "failed", "dropped"]

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


class Notifier:
    """Sends alerts to the configured sinks from background threads; see the module docstring.

    Use as a context manager, or call :meth:`close` when done.
    """

    def __init__(
        self,
        sinks: Sequence[Sink],
        *,
        metrics: DaemonMetrics | None = None,
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
                rollout=alert.rollout,
            )
        for name, worker in self._workers.items():
            if alert.kind in worker.sink.on and (wanted is None or name in wanted):
                worker.submit(alert)

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


class _SinkWorker:
    """One sink's queue and the thread that delivers from it."""

    def __init__(
        self,
        sink: Sink,
        *,
        transport: httpx.BaseTransport | None,
        backoff: Backoff,
        metrics: DaemonMetrics | None,
        queue_size: int,
    ) -> None:
        self.sink = sink
        self._backoff = backoff
        self._metrics = metrics
        self._queue_size = queue_size
        self._queue: collections.deque[Alert] = collections.deque()
        self._cond = threading.Condition()
        self._busy = False
        self._stopping = False
        # Set at shutdown so a backoff wait ends at once instead of delaying exit.
        self._stop = threading.Event()
        # Jitter only spreads retries out; it needs no cryptographic quality.
        self._random = random.Random()  # noqa: S311
        self._http = httpx.Client(
            transport=transport,
            timeout=sink.timeout.total_seconds(),
            headers={"User-Agent": _USER_AGENT},
        )
        self._log = log.bind(sink=sink.name, sink_type=sink.type)
        self._thread = threading.Thread(
            target=self._run, name=f"autocanary-notify-{sink.name}", daemon=True
        )
        self._thread.start()

    def submit(self, alert: Alert) -> None:
        """Queue ``alert``; when the queue is full, drop the oldest non-critical alert."""
        with self._cond:
            if self._stopping:
                dropped: Alert | None = alert
            else:
                dropped = self._make_room(alert) if len(self._queue) >= self._queue_size else None
                if dropped is not alert:
                    self._queue.append(alert)
                    self._cond.notify_all()
        if dropped is not None:
            self._count("dropped")
            self._log.warning(
                "alert dropped",
                why="notifier closed" if self._stopping else "queue full",
                kind=dropped.kind,
                rollout=dropped.rollout,
                namespace=dropped.namespace,
            )

    def _make_room(self, incoming: Alert) -> Alert:
        # Called with the lock held and the queue full. Critical alerts
        # (rollbacks) are the last to go: the oldest non-critical queued alert
        # goes first, then a non-critical newcomer, then the oldest critical one.
        for queued in self._queue:
            if queued.severity != "critical":
                self._queue.remove(queued)
                return queued
        if incoming.severity != "critical":
            return incoming
        return self._queue.popleft()

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
        self._stop.set()

    def join(self, timeout: float) -> bool:
        """Wait for the thread to exit; True if it did."""
        self._thread.join(max(0.0, timeout))
        return not self._thread.is_alive()

    def _run(self) -> None:
        _redacting.active = True
        try:
            while (alert := self._next()) is not None:
                try:
                    self._deliver(alert)
                finally:
                    with self._cond:
                        self._busy = False
                        self._cond.notify_all()
        finally:
            self._http.close()
            with self._cond:
                abandoned, self._queue = list(self._queue), collections.deque()
                self._cond.notify_all()
            for alert in abandoned:
                self._count("dropped")
                self._log.warning(
                    "alert dropped", why="notifier closed", kind=alert.kind, rollout=alert.rollout
                )

    def _next(self) -> Alert | None:
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._stopping)
            if self._stopping:
                return None
            self._busy = True
            return self._queue.popleft()

    def _deliver(self, alert: Alert) -> None:
        log = self._log.bind(kind=alert.kind, rollout=alert.rollout, namespace=alert.namespace)
        try:
            url = self.sink.url.resolve()
        except ValueError as e:
            self._count("failed")
            # No traceback: rendered with locals, it would show the secret.
            log.error("alert sink URL unavailable", source=self.sink.url.describe(), error=str(e))
            return
        try:
            result = self._post(_endpoint(self.sink, url), _payload(self.sink, alert), log)
        except Exception as e:  # noqa: BLE001 - a bug in one delivery must not kill the worker
            self._count("failed")
            # No traceback: rendered with locals, it would show the URL.
            log.error("alert delivery crashed", error_type=type(e).__name__, error=str(e))
            return
        if result.delivered:
            self._count("ok")
            log.info("alert delivered", attempts=result.attempts, status=result.status)
        else:
            self._count("failed")
            log.error(
                "alert delivery failed",
                attempts=result.attempts,
                status=result.status,
                error=result.error,
                why=result.why,
            )

    def _post(self, url: str, body: object, log: Any) -> _Result:
        """POST ``body`` to ``url``, retrying what may pass (see the module docstring)."""
        attempts = self.sink.retries + 1
        for attempt in range(1, attempts + 1):
            status, error, retry_after = self._attempt(url, body)
            if status is not None and 200 <= status < 300:
                return _Result(True, attempt, status, None, "delivered")
            if status is not None and status not in _RETRYABLE_STATUS and status < 500:
                return _Result(False, attempt, status, error, "not retryable")
            if attempt == attempts:
                break
            delay = self._backoff.delay(attempt, self._random.random(), retry_after)
            log.warning(
                "alert delivery attempt failed, retrying",
                attempt=attempt,
                status=status,
                error=error,
                delay_s=round(delay, 3),
            )
            if self._stop.wait(delay):
                return _Result(False, attempt, status, error, "shutting down")
        return _Result(False, attempts, status, error, "retries exhausted")

    def _attempt(self, url: str, body: object) -> tuple[int | None, str | None, float | None]:
        """One POST: (status, None, Retry-After seconds) or (None, error, None)."""
        try:
            response = self._http.post(url, json=body)
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
