"""The HTTP/1.1 side of testpage: a lean asyncio protocol with keep-alive and pipelining.

It speaks just what a test app behind a Service meets: GET and HEAD, request
bodies framed by Content-Length (read and ignored), keep-alive, HTTP/1.0.
Chunked request bodies get 501 and the connection closes. Answers leave in
request order: while one waits out an injected latency, reading pauses, so a
pipelining client cannot pile up requests behind it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from email.utils import formatdate
from typing import TYPE_CHECKING, cast

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from autocanary.apps.testpage import EchoApp

_MAX_HEAD = 16 * 1024
_MAX_BODY = 1024 * 1024
_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    503: b"Service Unavailable",
}
_PATHS = {b"/": "/", b"/healthz": "/healthz", b"/metrics": "/metrics"}
_TEXT = b"text/plain; charset=utf-8"
_METRICS_TYPE = CONTENT_TYPE_LATEST.encode()


@dataclass(frozen=True, slots=True)
class Request:
    """The parts of a request head the test page acts on."""

    method: str
    path: bytes
    keep_alive: bool
    http10: bool
    body_length: int


class BadRequest(Exception):
    """A request head the server cannot serve; ``status`` is the answer to give."""

    def __init__(self, status: int, why: str) -> None:
        """Answer ``status`` with ``why`` as the body."""
        super().__init__(why)
        self.status = status


def parse_head(head: bytes) -> Request:
    """Parse a request head (request line and headers, without the blank line).

    Raises BadRequest for malformed heads, unsupported versions and bodies.
    """
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[1].startswith(b"/"):
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise BadRequest(400, "only HTTP/1.0 and HTTP/1.1 are served")
    http10 = version == b"HTTP/1.0"
    keep_alive = not http10
    body_length = 0
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise BadRequest(400, "malformed header line")
        name = name.strip().lower()
        if name == b"connection":
            tokens = {token.strip() for token in value.lower().split(b",")}
            if b"close" in tokens:
                keep_alive = False
            elif b"keep-alive" in tokens:
                keep_alive = True
        elif name == b"content-length":
            try:
                body_length = int(value)
            except ValueError:
                raise BadRequest(400, "Content-Length is not a number") from None
            if not 0 <= body_length <= _MAX_BODY:
                raise BadRequest(413, "request body too large")
        elif name == b"transfer-encoding":
            raise BadRequest(501, "chunked request bodies are not supported")
    path = target.split(b"?", 1)[0]
    return Request(method.decode("latin-1"), path, keep_alive, http10, body_length)


class _HttpDate:
    """The Date header value, formatted at most once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


_DATE = _HttpDate()


class HttpConnection(asyncio.Protocol):
    """One client connection to the test page."""

    def __init__(self, page: EchoApp, registry: set[HttpConnection]) -> None:
        """Serve ``page``; stay in ``registry`` while open, so shutdown can wait for us."""
        self._page = page
        self._registry = registry
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._busy = False  # an answer is waiting out injected latency
        self._closing = False
        self._eof = False
        self._version = page.settings.version.encode()
        self._ip = (page.settings.pod_ip or "").encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register the connection and learn the address requests arrive on."""
        self._transport = cast(asyncio.Transport, transport)
        if not self._ip:
            sockname = transport.get_extra_info("sockname")
            self._ip = str(sockname[0]).encode() if sockname else b"unknown"
        self._registry.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection; an answer still waiting on latency is dropped."""
        self._closing = True
        self._registry.discard(self)

    def eof_received(self) -> bool:
        """Keep the socket open for an answer still owed after the client half-closed."""
        self._eof = True
        return self._busy

    def data_received(self, data: bytes) -> None:
        """Buffer bytes and answer every complete request, in order."""
        self._buf += data
        if not self._busy:
            self._process()

    def close_if_idle(self) -> None:
        """Close now unless a request is being answered or partly received."""
        if not self._busy and not self._buf:
            self._close()

    def _process(self) -> None:
        while not self._busy and not self._closing:
            if self._buf.startswith(b"\r\n"):
                # RFC 9112 2.2: ignore empty lines before a request line.
                del self._buf[:2]
                continue
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > _MAX_HEAD:
                    self._reject(431, "request head too large")
                return
            try:
                request = parse_head(bytes(self._buf[:end]))
            except BadRequest as e:
                self._reject(e.status, str(e))
                return
            total = end + 4 + request.body_length
            if len(self._buf) < total:
                return
            del self._buf[:total]
            self._dispatch(request)

    def _dispatch(self, request: Request) -> None:
        started = time.perf_counter()
        path = _PATHS.get(request.path, "other")
        if request.method not in ("GET", "HEAD"):
            self._send(
                request,
                ("other", path),
                405,
                b"method not allowed\n",
                extra=b"Allow: GET, HEAD\r\n",
            )
        elif path == "/":
            delay, fail = self._page.draw_faults()
            if delay > 0.0:
                self._busy = True
                self._page.waiting.inc()
                self._transport_or_fail().pause_reading()
                loop = asyncio.get_running_loop()
                loop.call_later(delay, self._answer_late, request, fail, started)
            else:
                self._answer_app(request, fail, started)
        elif path == "/healthz":
            if self._page.draining:
                self._send(request, (request.method, path), 503, b"draining\n")
            elif not self._page.ready():
                self._send(request, (request.method, path), 503, b"not ready (FAULT_UNREADY)\n")
            else:
                self._send(request, (request.method, path), 200, b"ok\n")
        elif path == "/metrics":
            body = generate_latest(self._page.registry)
            self._send(request, (request.method, path), 200, body, content_type=_METRICS_TYPE)
        else:
            self._send(request, (request.method, path), 404, b"not found\n")

    def _answer_late(self, request: Request, fail: bool, started: float) -> None:
        self._busy = False
        self._page.waiting.dec()
        if self._closing:
            return
        self._answer_app(request, fail, started)
        if not self._closing:
            self._transport_or_fail().resume_reading()
            self._process()

    def _answer_app(self, request: Request, fail: bool, started: float) -> None:
        line = b"I am: %s, the version is: %s" % (self._ip, self._version)
        if fail:
            self._send(
                request, (request.method, "/"), 500, line + b" (failing: FAULT_ERROR_RATE)\n"
            )
        else:
            self._send(request, (request.method, "/"), 200, line + b"\n")
        self._page.observe(time.perf_counter() - started)

    def _send(
        self,
        request: Request,
        labels: tuple[str, str],
        status: int,
        body: bytes,
        *,
        extra: bytes = b"",
        content_type: bytes = _TEXT,
    ) -> None:
        """Write one answer; ``labels`` are the (method, path) it is counted under."""
        keep_alive = request.keep_alive and not self._page.draining and not self._eof
        if not keep_alive:
            extra += b"Connection: close\r\n"
        elif request.http10:
            extra += b"Connection: keep-alive\r\n"
        head = (
            b"HTTP/1.1 %d %s\r\nDate: %s\r\nX-Version: %s\r\n"
            b"Content-Type: %s\r\nContent-Length: %d\r\n%s\r\n"
        ) % (status, _REASONS[status], _DATE.get(), self._version, content_type, len(body), extra)
        self._transport_or_fail().write(head if request.method == "HEAD" else head + body)
        self._page.count(status, *labels)
        if not keep_alive:
            self._close()

    def _reject(self, status: int, why: str) -> None:
        """Answer a request that could not be parsed, then close: framing is lost."""
        request = Request("GET", b"", keep_alive=False, http10=False, body_length=0)
        self._send(request, ("other", "other"), status, why.encode() + b"\n")

    def _close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    def _transport_or_fail(self) -> asyncio.Transport:
        if self._transport is None:
            raise RuntimeError("HttpConnection used before connection_made")
        return self._transport
