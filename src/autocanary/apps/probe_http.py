"""The probe's HTTP/1.1 client: one GET on a fresh connection, as lean as asyncio allows.

A new connection per request is deliberate. kube-proxy balances connections,
not requests: over keep-alive, a probe's traffic would stick to whichever pods
its first connections reached, and the split would not follow the replica
ratio the canary relies on. Each request says ``Connection: close``, so the
server closes first and keeps the TIME_WAIT sockets, not the probe's ports.

Not httpx: on one core it sustained ~350 such requests/s against testpage
where this client does ~2000 (``bench/probe.py`` measures the probe's limit).
The caller bounds every fetch with a timeout.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

_MAX_HEAD = 64 * 1024
# Attribution needs only the start of a body; the rest is read and dropped.
_KEEP_BODY = 4096
_READ_CHUNK = 64 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})
_DNS_TTL_S = 5.0


class FetchError(Exception):
    """A request that got no complete HTTP answer; ``reason`` is the metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        """``reason``: dns, connect, tls, reset, closed or protocol; ``detail`` for logs."""
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Answer:
    """What attribution needs from one answer."""

    status: int
    version_header: str | None
    body: bytes


@dataclass(frozen=True)
class Endpoint:
    """A parsed target URL with its request bytes built once."""

    url: str
    host: str
    port: int
    tls: ssl.SSLContext | None
    request: bytes

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        """Parse an ``http://`` or ``https://`` URL; ValueError says what is wrong with it."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// URL with a host, got {url!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError(f"credentials in the URL are not supported, got {url!r}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as e:
            raise ValueError(f"invalid port in URL {url!r}: {e}") from e
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = (
            f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "User-Agent: autocanary-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        )
        try:
            request = head.encode("ascii")
        except UnicodeEncodeError as e:
            raise ValueError(f"URL must be ASCII (percent-encode the rest), got {url!r}") from e
        tls = ssl.create_default_context() if parts.scheme == "https" else None
        return cls(url, parts.hostname, port, tls, request)


class Resolver:
    """Host name lookups cached for a few seconds.

    A probe at 1000 requests/s must not ask the cluster DNS 1000 times a second
    (times the search path), yet should follow a Service that moves.
    """

    def __init__(self, ttl_s: float = _DNS_TTL_S) -> None:
        """Keep each answer ``ttl_s`` seconds."""
        self._ttl_s = ttl_s
        self._cache: dict[tuple[str, int], tuple[float, str]] = {}

    async def resolve(self, host: str, port: int) -> str:
        """The address to connect to for ``host``; raises FetchError("dns") on failure."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        hit = self._cache.get((host, port))
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            raise FetchError("dns", f"cannot resolve {host}: {e}") from e
        address = str(infos[0][4][0])
        self._cache[(host, port)] = (now + self._ttl_s, address)
        return address


async def fetch(endpoint: Endpoint, resolver: Resolver) -> Answer:
    """GET the endpoint on a new connection and read the whole answer.

    Raises FetchError when no complete answer arrives. Has no timeout of its
    own: the caller wraps it in one, and cancellation closes the connection.
    """
    address = await resolver.resolve(endpoint.host, endpoint.port)
    try:
        reader, writer = await asyncio.open_connection(
            address,
            endpoint.port,
            ssl=endpoint.tls,
            server_hostname=endpoint.host if endpoint.tls else None,
            limit=_MAX_HEAD,
        )
    except ssl.SSLError as e:
        raise FetchError("tls", str(e)) from e
    except OSError as e:
        raise FetchError("connect", str(e)) from e
    try:
        writer.write(endpoint.request)
        head = await reader.readuntil(b"\r\n\r\n")
        status, length, chunked, version, closing = _parse_head(head)
        if status in _NO_BODY_STATUSES:
            body = b""
        else:
            # Without a length (chunked, or delimited by close) the body ends when
            # the server closes, which it does because we asked for Connection: close.
            body = await _read_body(reader, None if chunked else length, keep=version is None)
        if closing:
            # The server promised to close: let it close first, so the TIME_WAIT
            # socket stays on its side and the probe's ports are not used up.
            await reader.read()
        return Answer(status, version, body)
    except asyncio.IncompleteReadError as e:
        raise FetchError("closed", "connection closed before a complete answer") from e
    except asyncio.LimitOverrunError as e:
        raise FetchError("protocol", f"answer head longer than {_MAX_HEAD} bytes") from e
    except ssl.SSLError as e:
        raise FetchError("tls", str(e)) from e
    except OSError as e:
        raise FetchError("reset", str(e)) from e
    finally:
        writer.close()


def _parse_head(head: bytes) -> tuple[int, int | None, bool, str | None, bool]:
    """Status, Content-Length, whether chunked, X-Version, and whether the server closes."""
    lines = head.split(b"\r\n")
    status_line = lines[0].split(b" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1."):
        raise FetchError("protocol", f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    try:
        status = int(status_line[1])
    except ValueError:
        raise FetchError("protocol", f"bad status code in {lines[0][:80]!r}") from None
    length: int | None = None
    chunked = False
    version: str | None = None
    closing = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                raise FetchError("protocol", "Content-Length is not a number") from None
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"x-version":
            version = value.strip().decode("latin-1")
        elif name == b"connection":
            closing = b"close" in value.lower()
    return status, length, chunked, version, closing


async def _read_body(reader: asyncio.StreamReader, length: int | None, *, keep: bool) -> bytes:
    """Read a body of ``length`` bytes (None: until EOF); return its start if ``keep``."""
    kept = bytearray()
    remaining = length
    while remaining is None or remaining > 0:
        size = _READ_CHUNK if remaining is None else min(_READ_CHUNK, remaining)
        chunk = await reader.read(size)
        if not chunk:
            if remaining is not None:
                raise asyncio.IncompleteReadError(bytes(kept), remaining)
            break
        if keep and len(kept) < _KEEP_BODY:
            kept += chunk[: _KEEP_BODY - len(kept)]
        if remaining is not None:
            remaining -= len(chunk)
    return bytes(kept)
