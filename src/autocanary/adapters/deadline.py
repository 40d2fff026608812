"""Wall-clock deadlines for blocking calls into client libraries.

The HTTP libraries the adapters use (urllib3 under the Kubernetes client and
requests, httpcore under httpx) apply their timeouts to each socket operation:
a server that trickles its answer a byte at a time resets the clock with every
byte and holds the caller for as long as it likes. :class:`DeadlineRunner`
bounds the whole call instead: the call runs in a daemon thread, and the caller
stops waiting when the deadline passes. The abandoned thread ends when the
library's own timeouts or the server end it; a runner refuses new calls while
``max_stuck`` earlier ones still hang, so a server that never lets go costs a
bounded number of threads and sockets.

The adapters translate :class:`DeadlineExceeded` into their own transient
errors (``KubernetesUnavailable``, ``PrometheusUnavailable``, a failed alert
attempt).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

_T = TypeVar("_T")


class DeadlineExceeded(Exception):
    """A call did not complete within its wall-clock deadline (or too many earlier ones hang)."""


class _Call:
    """One call's outcome, shared between the caller and the thread running it."""

    def __init__(self) -> None:
        self.done = False
        self.abandoned = False
        self.value: object = None
        self.error: BaseException | None = None


class DeadlineRunner:
    """Runs blocking calls with a wall-clock deadline each; see the module docstring."""

    def __init__(self, name: str, *, max_stuck: int = 8) -> None:
        """``name`` prefixes the threads; ``max_stuck`` bounds the abandoned calls still running."""
        self.name = name
        self.max_stuck = max_stuck
        self._lock = threading.Condition()
        self._stuck = 0

    @property
    def stuck(self) -> int:
        """Abandoned calls whose threads are still running."""
        with self._lock:
            return self._stuck

    def call(self, fn: Callable[[], _T], seconds: float) -> _T:
        """Return ``fn()``, or raise :class:`DeadlineExceeded` once ``seconds`` have passed.

        Exceptions from ``fn`` propagate unchanged, so callers translate them as
        they would without a deadline.
        """
        with self._lock:
            if self._stuck >= self.max_stuck:
                raise DeadlineExceeded(
                    f"{self._stuck} earlier calls are still waiting for an answer; not starting "
                    "another"
                )
        call = _Call()

        def run() -> None:
            try:
                call.value = fn()
            except BaseException as e:  # noqa: BLE001 -- handed to the caller as it is
                call.error = e
            finally:
                with self._lock:
                    call.done = True
                    if call.abandoned:
                        self._stuck -= 1
                    self._lock.notify_all()

        threading.Thread(target=run, name=f"{self.name}-call", daemon=True).start()
        with self._lock:
            if not self._lock.wait_for(lambda: call.done, timeout=max(0.0, seconds)):
                call.abandoned = True
                self._stuck += 1
                raise DeadlineExceeded(f"no complete answer within {seconds:g}s")
        if call.error is not None:
            raise call.error
        return call.value  # type: ignore[return-value]
