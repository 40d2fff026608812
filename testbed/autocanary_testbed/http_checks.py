"""Readiness checks over HTTP for services the test bed starts on 127.0.0.1."""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable

import httpx

_CHECK_TIMEOUT_S = 2.0


@functools.cache
def _client(tls: ssl.SSLContext | None) -> httpx.Client:
    """One client per trust setting for every check of the process.

    A new client per check built a TLS context (the CA bundle parsed) every
    time: the pod runner's readiness probes alone kept a test process at 15%
    of a core. No keep-alive: a check must see a restarted server as it is.
    """
    # trust_env=False: a proxy from the environment must never see test-bed traffic.
    return httpx.Client(
        verify=tls or True,
        trust_env=False,
        timeout=_CHECK_TIMEOUT_S,
        limits=httpx.Limits(max_keepalive_connections=0),
    )


def http_ok(url: str, *, tls: ssl.SSLContext | None = None) -> bool:
    """Whether GET ``url`` answers 2xx now; False while the service is not listening yet."""
    try:
        return _client(tls).get(url).is_success
    except httpx.HTTPError:
        return False


def http_ready(url: str, *, tls: ssl.SSLContext | None = None) -> Callable[[], bool]:
    """A check for ``ManagedProcess.wait_ready``: GET ``url`` answers 2xx."""
    return lambda: http_ok(url, tls=tls)
