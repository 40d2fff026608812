"""testpage: the version echo app to rehearse releases with.

``GET /`` answers ``I am: <pod ip>, the version is: <VERSION>`` with the header
``X-Version: <VERSION>``; ``/healthz`` is the readiness probe; ``/metrics`` is
Prometheus text. Run it as ``autocanary testpage`` or ``python -m autocanary.apps.testpage``.

Environment (an empty value counts as unset):

- ``VERSION``: the version this instance names (default ``dev``); letters, digits, ``._+-``.
- ``POD_IP``: the address to report (default: the address the request arrived on).
- ``FAULT_ERROR_RATE``: the fraction of ``GET /`` answered 500, ``0.2`` or ``20%``.
- ``FAULT_LATENCY``: latency added to ``GET /``: ``200ms``, or ``200ms±50ms``
  (ASCII: ``200ms+-50ms``) for a uniform spread between 150ms and 250ms.
- ``FAULT_AFTER``: healthy for this long after start, then the faults apply (``30s``).
- ``FAULT_FOR``: the faults apply for this long, then stop (``20s``; default: for good).
- ``FAULT_SEED``: an integer seeding the fault draws, for runs that repeat exactly.
- ``FAULT_UNREADY``: ``true`` makes ``/healthz`` answer 503 while the faults apply,
  so the instance is never Ready (a release stuck before it serves) yet keeps running.

An invalid value stops the start with exit status 2 and a message naming the
variable and the form expected. The other faults touch only ``/``: readiness and
scrapes stay healthy, as they would in a release whose application code is broken.

Metrics:

- ``testpage_requests_total{version,code,method,path}``: every request answered;
  ``path`` is ``/``, ``/healthz``, ``/metrics`` or ``other``.
- ``testpage_request_duration_seconds{version}``: histogram of ``/`` answers,
  injected latency included (buckets from ``autocanary.latency``).
- ``testpage_requests_waiting{version}``: requests waiting out injected latency.

Shutdown: on SIGTERM ``/healthz`` fails at once and every answer carries
``Connection: close`` while the instance keeps serving for ``--drain-delay``
(default 5s), the time an endpoints controller needs to take it out of the
Service. Then it stops accepting, finishes the requests in flight, closes idle
connections and exits 0. SIGINT (Ctrl-C) skips the delay; a second signal ends
the delay early.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import random
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from autocanary.apps.testpage_http import HttpConnection
from autocanary.config.units import parse_duration, parse_percent
from autocanary.errors import ConfigError, ConfigProblem
from autocanary.latency import LATENCY_BUCKETS

log = structlog.get_logger(__name__)

DEFAULT_VERSION = "dev"
_VERSION_FORM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_SPREAD_SEPARATORS = ("±", "+-")
# A drain longer than this means a client holds a request open forever; the
# kubelet would SIGKILL us at its grace period anyway, so give up first.
_DRAIN_CAP_S = 30.0

_T = TypeVar("_T")


@dataclass(frozen=True)
class Faults:
    """The faults one instance injects into ``GET /``; all zero means healthy."""

    error_rate: float = 0.0
    latency_s: float = 0.0
    spread_s: float = 0.0
    after_s: float = 0.0
    seed: int | None = None
    for_s: float | None = None  # None: the faults never stop
    unready: bool = False  # /healthz fails while the faults apply

    def delay(self, rng: random.Random) -> float:
        """Latency to add to one answer, in seconds: uniform in latency ± spread, never < 0."""
        if self.spread_s == 0.0:
            return self.latency_s
        return max(0.0, rng.uniform(self.latency_s - self.spread_s, self.latency_s + self.spread_s))


@dataclass(frozen=True)
class Settings:
    """Everything the environment configures: who this instance is and what it breaks."""

    version: str = DEFAULT_VERSION
    pod_ip: str | None = None
    faults: Faults = Faults()


def parse_fraction(text: str) -> float:
    """Parse a fraction in [0, 1] given as ``0.2`` or ``20%``."""
    expected = f"a fraction between 0 and 1 such as 0.2, or a percentage such as 20%, got {text!r}"
    try:
        value = parse_percent(text) if text.strip().endswith("%") else float(text)
    except ValueError as e:
        raise ValueError(f"expected {expected}") from e
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"expected {expected}")
    return value


def parse_latency(text: str) -> tuple[float, float]:
    """Parse ``200ms`` or ``200ms±50ms`` (``200ms+-50ms``) into (latency, spread) seconds."""
    expected = (
        f"a duration such as 200ms, optionally with a spread such as 200ms±50ms, got {text!r}"
    )
    base, spread = text, "0s"
    for separator in _SPREAD_SEPARATORS:
        if separator in text:
            base, _, spread = text.partition(separator)
            break
    try:
        return _seconds(base), _seconds(spread)
    except ValueError as e:
        raise ValueError(f"expected {expected}") from e


def _seconds(text: str) -> float:
    """A duration string (units required) in seconds."""
    delta: timedelta = parse_duration(text.strip())
    return delta.total_seconds()


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """Read and check ``VERSION``, ``POD_IP`` and the ``FAULT_*`` variables.

    Raises ConfigError listing every invalid variable, each with the form expected.
    """
    problems: list[ConfigProblem] = []

    def read(name: str, parse: Callable[[str], _T], default: _T) -> _T:
        raw = env.get(name, "").strip()
        if not raw:
            return default
        try:
            return parse(raw)
        except ValueError as e:
            problems.append(ConfigProblem("environment", None, name, str(e)))
            return default

    version = read("VERSION", _parse_version, DEFAULT_VERSION)
    pod_ip = read("POD_IP", _parse_ip, None)
    error_rate = read("FAULT_ERROR_RATE", parse_fraction, 0.0)
    latency_s, spread_s = read("FAULT_LATENCY", parse_latency, (0.0, 0.0))
    after_s = read("FAULT_AFTER", _parse_after, 0.0)
    seed = read("FAULT_SEED", _parse_seed, None)
    for_s = read("FAULT_FOR", _parse_after, None)
    unready = read("FAULT_UNREADY", _parse_bool, False)
    if problems:
        raise ConfigError(problems)
    return Settings(
        version, pod_ip, Faults(error_rate, latency_s, spread_s, after_s, seed, for_s, unready)
    )


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _parse_version(text: str) -> str:
    if not _VERSION_FORM.fullmatch(text):
        raise ValueError(
            "expected up to 128 letters, digits or ._+- starting with a letter or digit "
            f"(it goes into a header and a metric label), got {text!r}"
        )
    return text


def _parse_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError as e:
        raise ValueError(f"expected an IPv4 or IPv6 address, got {text!r}") from e


def _parse_seed(text: str) -> int:
    try:
        return int(text)
    except ValueError as e:
        raise ValueError(f"expected an integer such as 42, got {text!r}") from e


def _parse_after(text: str) -> float:
    try:
        return _seconds(text)
    except ValueError as e:
        raise ValueError(f"expected a duration such as 30s or 2m, got {text!r}") from e


class EchoApp:
    """The application behind the HTTP connections: answers, faults, metrics, drain state."""

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Start the fault onset clock now; register metrics in ``registry``."""
        self.settings = settings
        self.registry = registry
        self.draining = False
        self._clock = clock
        self._started = clock()
        # Not for security: the fault draw only needs to be uniform and cheap.
        self._rng = random.Random(settings.faults.seed)  # noqa: S311
        self._requests = Counter(
            "testpage_requests_total",
            "Requests answered, by status code, method and path.",
            ["version", "code", "method", "path"],
            registry=registry,
        )
        self._duration = Histogram(
            "testpage_request_duration_seconds",
            "Time to answer GET /, injected latency included.",
            ["version"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ).labels(settings.version)
        self.waiting = Gauge(
            "testpage_requests_waiting",
            "Requests received and still waiting out injected latency.",
            ["version"],
            registry=registry,
        ).labels(settings.version)
        # Children are looked up per request; caching them skips prometheus_client's
        # label validation on the hot path.
        self._children: dict[tuple[int, str, str], Counter] = {}
        # Both outcomes of GET / exist from the start, so an error ratio reads 0, not "no data".
        for code in (200, 500):
            self._child(code, "GET", "/")

    def _faults_apply(self) -> bool:
        faults = self.settings.faults
        elapsed = self._clock() - self._started
        return elapsed >= faults.after_s and (
            faults.for_s is None or elapsed < faults.after_s + faults.for_s
        )

    def ready(self) -> bool:
        """Whether ``/healthz`` passes: not draining, and no ``FAULT_UNREADY`` in force."""
        return not self.draining and not (self.settings.faults.unready and self._faults_apply())

    def draw_faults(self) -> tuple[float, bool]:
        """For one ``GET /``: seconds of latency to add and whether to answer 500."""
        faults = self.settings.faults
        if not self._faults_apply():
            return 0.0, False
        fail = faults.error_rate > 0.0 and self._rng.random() < faults.error_rate
        return faults.delay(self._rng), fail

    def count(self, code: int, method: str, path: str) -> None:
        """Count one answered request."""
        self._child(code, method, path).inc()

    def _child(self, code: int, method: str, path: str) -> Counter:
        key = (code, method, path)
        child = self._children.get(key)
        if child is None:
            child = self._requests.labels(self.settings.version, str(code), method, path)
            self._children[key] = child
        return child

    def observe(self, seconds: float) -> None:
        """Record the answer time of one ``GET /``."""
        self._duration.observe(seconds)


async def serve(settings: Settings, host: str, port: int, drain_delay_s: float) -> int:
    """Serve until SIGTERM/SIGINT, drain, and return the exit status."""
    loop = asyncio.get_running_loop()
    page = EchoApp(settings, CollectorRegistry())
    connections: set[HttpConnection] = set()
    try:
        server = await loop.create_server(
            lambda: HttpConnection(page, connections), host, port, backlog=1024
        )
    except OSError as e:
        log.error("testpage cannot listen", host=host, port=port, error=str(e))
        return 1
    bound = server.sockets[0].getsockname()
    log.info(
        "testpage serving",
        address=f"{bound[0]}:{bound[1]}",
        version=settings.version,
        faults=settings.faults,
    )
    stop, hurry = asyncio.Event(), asyncio.Event()
    delay = {"s": drain_delay_s}

    def on_signal(signum: signal.Signals) -> None:
        if stop.is_set():
            hurry.set()
            return
        if signum == signal.SIGINT:
            delay["s"] = 0.0
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await stop.wait()

    page.draining = True
    log.info("testpage draining", delay_s=delay["s"], connections=len(connections))
    if delay["s"] > 0:
        # Running out of time is the normal end; a second signal ends the delay early.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hurry.wait(), delay["s"])
    server.close()
    deadline = loop.time() + _DRAIN_CAP_S
    while connections and loop.time() < deadline:
        for connection in list(connections):
            connection.close_if_idle()
        await asyncio.sleep(0.01)
    log.info("testpage stopped", abandoned_connections=len(connections))
    return 0


def _duration_arg(text: str) -> float:
    """argparse type for durations: seconds as float, with the expected form on error."""
    try:
        return _seconds(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def main(argv: Sequence[str] | None = None) -> int:
    """Run the test page; the exit status is 0 after a clean drain, 2 for invalid input."""
    parser = argparse.ArgumentParser(
        prog="autocanary testpage",
        description="Version echo app with injectable faults.",
        epilog=(
            "environment: VERSION, POD_IP, FAULT_ERROR_RATE (0.2 or 20%), "
            "FAULT_LATENCY (200ms or 200ms±50ms), FAULT_AFTER (30s), FAULT_FOR (20s), "
            "FAULT_SEED (integer), FAULT_UNREADY (true: /healthz fails)"
        ),
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")  # noqa: S104
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")
    parser.add_argument(
        "--drain-delay",
        type=_duration_arg,
        default=5.0,
        metavar="DURATION",
        help="after SIGTERM, keep serving this long with /healthz failing (default: 5s)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be between 0 and 65535, got {args.port}")
    try:
        settings = settings_from_env(os.environ)
    except ConfigError as e:
        parser.exit(2, f"autocanary testpage: invalid environment:\n{e}\n")
    return asyncio.run(serve(settings, args.host, args.port, args.drain_delay))


if __name__ == "__main__":
    sys.exit(main())
