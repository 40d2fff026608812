"""An HTTP proxy on 127.0.0.1 that can make a healthy server trickle its answers.

Put in front of the real Prometheus (or any HTTP server) to play the slow,
half-broken network path that per-read timeouts cannot catch: with
``trickle`` on, each answer is fetched from upstream at once, then written
back a byte at a time with ``byte_delay`` between bytes, status line and
headers included, so every single read the client makes succeeds quickly.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

import httpx

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class TrickleProxy:
    """Forwards to ``upstream``; counts answers, and trickles them while ``trickle`` is set."""

    def __init__(self, upstream: str, *, byte_delay: float = 0.5) -> None:
        """Bind a free 127.0.0.1 port; :meth:`start` begins serving."""
        self.upstream = upstream.rstrip("/")
        self.byte_delay = byte_delay
        self.trickle = False
        #: Answers sent whole, and trickled answers begun and finished.
        self.answered = 0
        self.trickles_started = 0
        self.trickles_finished = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._http = httpx.Client(trust_env=False, timeout=30)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                proxy._forward(self, None)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                proxy._forward(self, self.rfile.read(length))

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: tests read the counters."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The proxy's base URL."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _forward(self, handler: BaseHTTPRequestHandler, body: bytes | None) -> None:
        headers = {
            k: v for k, v in handler.headers.items() if k.lower() not in _HOP_BY_HOP | {"host"}
        }
        upstream = self._http.request(
            handler.command, self.upstream + handler.path, headers=headers, content=body
        )
        content = upstream.content
        lines = [f"HTTP/1.1 {upstream.status_code} {upstream.reason_phrase}"]
        lines += [
            f"{k}: {v}"
            for k, v in upstream.headers.items()
            if k.lower() not in _HOP_BY_HOP | {"content-encoding"}
        ]
        lines += [f"Content-Length: {len(content)}", "Connection: close"]
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + content
        handler.close_connection = True
        if not self.trickle:
            handler.wfile.write(raw)
            with self._lock:
                self.answered += 1
            return
        with self._lock:
            self.trickles_started += 1
        for i in range(len(raw)):
            if self._stopping.wait(self.byte_delay):
                return
            try:
                handler.wfile.write(raw[i : i + 1])
                handler.wfile.flush()
            except OSError:
                return  # the client gave up: what a deadline is for
        with self._lock:
            self.trickles_finished += 1

    def start(self) -> Self:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (trickles under way end at once) and close the socket."""
        self._stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
        self._server.server_close()
        self._http.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
