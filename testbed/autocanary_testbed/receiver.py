"""A webhook receiver on 127.0.0.1 that keeps every JSON body POSTed to it.

Stands in for the on-call webhook (or Slack) in end-to-end tests and the
rehearsal, which read back the alerts the daemon sent.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from autocanary_testbed.waiting import wait_until


class AlertReceiver:
    """Collects POSTed JSON bodies; ``received`` lists them in arrival order."""

    def __init__(self) -> None:
        """Bind a free 127.0.0.1 port; :meth:`start` begins serving."""
        self.received: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"unparsed": raw.decode("utf-8", "replace")}
                receiver._add({"path": self.path, "body": body})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: tests read ``received`` instead."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL; any path is accepted."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def on_receive(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Call ``listener`` with each new entry ({path, body}) as it arrives."""
        self._listeners.append(listener)

    def _add(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.received.append(entry)
        for listener in self._listeners:
            listener(entry)

    def bodies(self, path: str | None = None) -> list[dict[str, Any]]:
        """The JSON bodies received so far, optionally only those POSTed to ``path``."""
        with self._lock:
            return [e["body"] for e in self.received if path is None or e["path"] == path]

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float, path: str | None = None
    ) -> dict[str, Any]:
        """Wait for a body matching ``predicate``; return it."""
        found: list[dict[str, Any]] = []

        def match() -> bool:
            found[:] = [b for b in self.bodies(path) if predicate(b)]
            return bool(found)

        wait_until(match, timeout=timeout, what="an alert matching the expectation")
        return found[0]

    def start(self) -> Self:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
