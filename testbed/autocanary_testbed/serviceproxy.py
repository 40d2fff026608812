"""A round-robin TCP proxy on 127.0.0.1 standing in for kube-proxy in front of a Service.

Like kube-proxy it balances connections, not requests: each accepted
connection goes to the next backend in turn and stays there. The backend list
can change at any time from any thread, as endpoints come and go with pods;
established connections keep their backend when it is removed, as with
kube-proxy. With no backend a connection is answered ``503`` and closed; when
the chosen backend cannot be reached, ``502``. Both are HTTP answers because
the Services in the test bed speak HTTP, and a status code is what the probe
counts.

The proxy runs its own event loop in a thread, so synchronous tests and the
rehearsal can drive it::

    with ServiceProxy() as proxy:
        proxy.set_backends(["127.0.0.1:8081", "127.0.0.1:8082"])
        httpx.get(proxy.url)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Self

import structlog

from autocanary_testbed.errors import HarnessError

log = structlog.get_logger(__name__)

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0
_CHUNK = 64 * 1024
_SETTLE_TURNS = 10


def _canned(status: bytes, text: bytes) -> bytes:
    return (
        b"HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s"
    ) % (status, len(text), text)


_NO_BACKEND = _canned(b"503 Service Unavailable", b"service proxy: no ready backend\n")
_BAD_GATEWAY = _canned(b"502 Bad Gateway", b"service proxy: backend unreachable\n")


def parse_backend(text: str) -> tuple[str, int]:
    """Split ``host:port`` (IPv6 as ``[::1]:port``); ValueError names the bad value."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"a backend is host:port with a port in 1-65535, got {text!r}")
    return host, int(port)


class ServiceProxy:
    """Round-robin TCP proxy on ``host`` (127.0.0.1), its backends changeable at runtime."""

    def __init__(
        self, port: int = 0, host: str = "127.0.0.1", connect_timeout_s: float = 2.0
    ) -> None:
        """Listen on ``host:port`` once started (port 0: the OS picks one)."""
        self._host = host
        self._requested_port = port
        self._connect_timeout_s = connect_timeout_s
        self._port: int | None = None
        # Replaced whole, never mutated: readers in the loop thread see one list or the other.
        self._backends: tuple[tuple[str, int], ...] = ()
        self._turn = 0
        self._counts: collections.Counter[str] = collections.Counter()
        self._counts_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: OSError | None = None
        # Stopping closes these transports rather than cancelling handlers: a
        # handler cancelled before its first step would never close its socket.
        self._streams: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The port listened on; only known after ``start``."""
        if self._port is None:
            raise RuntimeError("ServiceProxy.port read before start()")
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` of the proxy."""
        return f"http://{self._host}:{self.port}"

    @property
    def backends(self) -> list[str]:
        """The current backends as ``host:port``."""
        return [f"{host}:{port}" for host, port in self._backends]

    def set_backends(self, backends: Sequence[str]) -> None:
        """Replace the backends (``host:port`` each); new connections use the new list."""
        parsed = tuple(parse_backend(backend) for backend in backends)
        self._backends = parsed

    def connection_counts(self) -> dict[str, int]:
        """How many connections went to each backend (``host:port``) so far."""
        with self._counts_lock:
            return dict(self._counts)

    def start(self) -> None:
        """Start listening; raises HarnessError if the address cannot be bound."""
        if self._thread is not None:
            raise RuntimeError("ServiceProxy started twice")
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve(),), name="service-proxy", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT_S):
            raise HarnessError(f"service proxy not listening after {_START_TIMEOUT_S:g}s")
        if self._error is not None:
            where = f"{self._host}:{self._requested_port}"
            raise HarnessError(f"service proxy cannot listen on {where}: {self._error}")

    def stop(self) -> None:
        """Close the listener and every proxied connection, and end the thread."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or loop is None or stopping is None or not thread.is_alive():
            return
        loop.call_soon_threadsafe(stopping.set)
        thread.join(_STOP_TIMEOUT_S)
        if thread.is_alive():
            raise HarnessError(f"service proxy thread still running after {_STOP_TIMEOUT_S:g}s")

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

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            server = await asyncio.start_server(self._accept, self._host, self._requested_port)
        except OSError as e:
            self._error = e
            self._ready.set()
            return
        self._port = int(server.sockets[0].getsockname()[1])
        log.debug("service proxy listening", url=self.url)
        self._ready.set()
        await self._stopping.wait()
        # Stop accepting before closing the server: on Python 3.11 a connection
        # accepted just before Server.close() fails to build its transport
        # (Server._attach asserts) and leaks its socket. Connections already
        # accepted need a few loop turns (transport, connection_made, first step
        # of the handler), where their handler sees the stop and closes them.
        for sock in server.sockets:
            self._loop.remove_reader(sock.fileno())
        for _ in range(_SETTLE_TURNS):
            await asyncio.sleep(0)
        server.close()
        for stream in self._streams:
            stream.transport.abort()
        if self._handlers:
            # Handlers end once their sockets are gone; one still connecting to a
            # backend ends within the connect timeout.
            await asyncio.wait(self._handlers, timeout=self._connect_timeout_s + 1.0)
        await server.wait_closed()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        self._streams.add(client_w)
        try:
            if self._stopping is None or not self._stopping.is_set():
                await self._proxy(client_r, client_w)
        except OSError as e:
            log.debug("service proxy connection failed", error=str(e))
        finally:
            await _close(client_w)
            self._streams.discard(client_w)
            if task is not None:
                self._handlers.discard(task)

    async def _proxy(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        backends = self._backends
        if not backends:
            client_w.write(_NO_BACKEND)
            await client_w.drain()
            return
        host, port = backends[self._turn % len(backends)]
        self._turn += 1
        with self._counts_lock:
            self._counts[f"{host}:{port}"] += 1
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                backend_r, backend_w = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as e:
            log.warning("service proxy backend unreachable", backend=f"{host}:{port}", error=str(e))
            client_w.write(_BAD_GATEWAY)
            await client_w.drain()
            return
        if self._stopping is not None and self._stopping.is_set():
            await _close(backend_w)  # connected while the proxy stopped: the client is gone
            return
        self._streams.add(backend_w)
        pipes = {
            asyncio.create_task(_pipe(client_r, backend_w)),
            asyncio.create_task(_pipe(backend_r, client_w)),
        }
        try:
            # Both directions end on EOF (passed on as a half-close); a reset on
            # either side ends both.
            done, _ = await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                error = task.exception()
                if error is not None:
                    raise error
        finally:
            for task in pipes:
                task.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            await _close(backend_w)
            self._streams.discard(backend_w)


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close and wait until the socket is really closed (unsent bytes flushed or aborted).

    A stream stays in ``_streams`` until then, so ``stop`` can abort it; one merely
    closing when the loop ends would leak its socket.
    """
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy bytes until EOF, then half-close the writing side."""
    while data := await reader.read(_CHUNK):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof() and not writer.is_closing():
        writer.write_eof()
