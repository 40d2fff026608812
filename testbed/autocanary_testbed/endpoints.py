"""An endpoints controller in miniature: a ServiceProxy's backends follow their /healthz.

Kubernetes takes a pod out of a Service once its readiness probe fails (and
when it terminates); ``ReadinessSync`` does the same for local processes by
polling ``http://<backend>/healthz`` and giving the proxy the ready ones.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Self

import structlog

from autocanary_testbed.errors import HarnessError
from autocanary_testbed.http_checks import http_ok
from autocanary_testbed.serviceproxy import ServiceProxy

log = structlog.get_logger(__name__)

_STOP_TIMEOUT_S = 10.0


class ReadinessSync:
    """Keeps ``proxy``'s backends equal to the candidates whose /healthz answers 2xx."""

    def __init__(
        self, proxy: ServiceProxy, candidates: Sequence[str], interval_s: float = 0.1
    ) -> None:
        """Poll each ``host:port`` candidate every ``interval_s`` seconds once started."""
        self._proxy = proxy
        self._candidates = tuple(candidates)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sync(self) -> list[str]:
        """Check every candidate now, update the proxy, and return the ready ones."""
        ready = [c for c in self._candidates if http_ok(f"http://{c}/healthz")]
        if ready != self._proxy.backends:
            log.info("service endpoints changed", ready=ready, was=self._proxy.backends)
            self._proxy.set_backends(ready)
        return ready

    def start(self) -> None:
        """Sync once, then keep syncing in a thread."""
        self.sync()
        self._thread = threading.Thread(target=self._run, name="readiness-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling; the proxy keeps its last backends."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(_STOP_TIMEOUT_S)
            if self._thread.is_alive():
                raise HarnessError("readiness sync thread did not stop")

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.sync()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
