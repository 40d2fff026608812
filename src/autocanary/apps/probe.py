"""probe: open-loop HTTP load on one or more targets, measured per version.

Run it as ``autocanary probe`` or ``python -m autocanary.apps.probe``::

    autocanary probe --target shop=http://shop.prod.svc/ --rate 50/s --timeout 2s
    autocanary probe --config probe.yaml --metrics-port 9102

Requests leave on a fixed schedule whether or not earlier ones were answered
(open loop), and latency counts from the *intended* send time, so a stalled
server shows up as latency and errors, never as fewer requests (no coordinated
omission). Each answer is attributed to the version it names: the
``X-Version`` header, else ``the version is: <v>`` in the body (testpage's
text), else ``unknown``; a failure (timeout, reset, refused, TLS) names none
and counts as ``unattributed``. Inside the cluster, a target
``service://NAMESPACE/NAME[:PORT][/PATH]`` follows the Service's
EndpointSlices as kube-proxy does (see :mod:`autocanary.apps.probe_service`): each
request goes to a ready endpoint chosen at random, and its answer *or
failure* counts against the version of that endpoint's pod (its
``--version-label``). Each request uses a new connection (see
``autocanary.apps.probe_http`` for why).

``--config`` takes a YAML file listing targets; fields missing from an entry
come from ``--rate`` and ``--timeout``::

    targets:
      - name: shop                 # optional; default: the URL
        url: http://shop.prod.svc/
        rate: 50/s                 # 50, 50/s, 3000/m or 10/h
        timeout: 2s

Metrics on ``--metrics-host:--metrics-port`` (the daemon's built-in analysis
templates query these names; changing one is a breaking change):

- ``probe_requests_total{target,version,code,reason}``: requests finished.
  ``code`` is the HTTP status (``200``, ``503``), or ``error`` when no complete
  answer came; ``reason`` then says why (``timeout``, ``dns``, ``connect``,
  ``tls``, ``reset``, ``closed``, ``protocol``) and is empty otherwise.
  Errors against a plain URL have no answer to name a version, so they count
  under ``unattributed`` (``service://`` targets count them against the pod's
  version; ``no-endpoints`` when the Service has no ready endpoint); past 16
  distinct versions on one target, new ones count as ``other``.
- ``probe_request_duration_seconds{target,version}``: histogram from intended
  send time to the end of the answer, errors included (buckets from
  ``autocanary.latency``, 1ms to 10s).
- ``probe_schedule_lag_seconds{target}``: histogram of how late each request
  left against its schedule. A lag that grows means the probe itself is
  saturated and its rate is lower than configured.
- ``probe_in_flight{target}``: requests sent and not yet finished.

For example, the error ratio of version v2 and its p99 latency. A version that
never failed has no error series at all, hence ``or vector(0)``: without it a
healthy canary reads as "no data"::

    (sum(rate(probe_requests_total{target="shop",version="v2",code=~"5..|error"}[1m]))
      or vector(0))
    / sum(rate(probe_requests_total{target="shop",version="v2"}[1m]))
    histogram_quantile(0.99, sum by (le) (
      rate(probe_request_duration_seconds_bucket{target="shop",version="v2"}[1m])))

``--duration`` stops the load after that long; the probe then serves
``/metrics`` for ``--linger`` more (default 1m: at least one scrape at the
usual 30s interval, so the final counts reach Prometheus), logs the totals and
exits 0, so it runs as a Kubernetes Job that completes. SIGTERM/SIGINT stop
the load (or the linger), wait for the requests in flight (at most one
timeout), and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import math
import re
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import structlog
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from autocanary.adapters.kubernetes import load_api_client
from autocanary.apps.probe_http import Answer, Endpoint, FetchError, Resolver, fetch
from autocanary.apps.probe_service import SCHEME, AddressMap, Backend, ServiceFollower, ServiceRef
from autocanary.config.units import parse_duration
from autocanary.errors import ConfigError, ConfigProblem
from autocanary.latency import LATENCY_BUCKETS

log = structlog.get_logger(__name__)

UNKNOWN = "unknown"
UNATTRIBUTED = "unattributed"
#: How long /metrics stays up after --duration: two scrapes at a 30s interval.
DEFAULT_LINGER_S = 60.0
OTHER = "other"
_MAX_VERSIONS = 16
_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:/\s*(s|m|h))?")
_RATE_UNITS = {None: 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_BODY_VERSION = re.compile(rb"the version is: ([A-Za-z0-9][A-Za-z0-9._+-]{0,127})")
_LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_TARGET_FIELDS = ("name", "url", "rate", "timeout")


@dataclass(frozen=True)
class Target:
    """One URL (or a Service's endpoints) loaded at a fixed rate."""

    name: str
    endpoint: Endpoint
    rate: float
    timeout_s: float
    service: ServiceRef | None = None  # follow its EndpointSlices (service:// targets)


def parse_url(url: str) -> tuple[Endpoint, ServiceRef | None]:
    """An ``http(s)://`` URL or ``service://NAMESPACE/NAME[:PORT][/PATH]``; else ValueError."""
    if url.strip().startswith(SCHEME):
        ref = ServiceRef.parse(url)
        return Endpoint.from_url(ref.url), ref
    return Endpoint.from_url(url), None


def parse_rate(text: str) -> float:
    """Parse ``50``, ``50/s``, ``3000/m`` or ``10/h`` into requests per second (> 0)."""
    match = _RATE.fullmatch(text.strip())
    if match is None or float(match.group(1)) <= 0.0:
        raise ValueError(f"expected a positive rate such as 50, 50/s, 3000/m or 10/h, got {text!r}")
    return float(match.group(1)) / _RATE_UNITS[match.group(2)]


def parse_timeout(text: str) -> float:
    """Parse a positive duration such as ``2s`` or ``500ms`` into seconds."""
    try:
        seconds = parse_duration(text.strip()).total_seconds()
    except ValueError:
        seconds = 0.0
    if seconds <= 0.0:
        raise ValueError(f"expected a positive duration such as 2s or 500ms, got {text!r}")
    return seconds


def check_name(name: str) -> str:
    """Return ``name`` if it can be a target label value; ValueError says the form otherwise."""
    if not _NAME.fullmatch(name):
        raise ValueError(
            "a target name is up to 63 letters, digits or ._- starting with a letter "
            f"or digit, got {name!r}"
        )
    return name


def parse_target_arg(text: str, rate: float, timeout_s: float) -> Target:
    """Parse a ``--target`` value, ``URL`` or ``name=URL``; the name defaults to the URL."""
    name, sep, url = text.partition("=")
    if not sep or "://" in name:
        name, url = text, text
    else:
        check_name(name)
    endpoint, service = parse_url(url)
    return Target(name, endpoint, rate, timeout_s, service)


_Problem = Callable[[yaml.Node | None, str, str], None]
_T = TypeVar("_T")


def load_config(path: Path, rate: float, timeout_s: float) -> list[Target]:
    """Read the targets of a YAML file; ``rate`` and ``timeout_s`` fill missing fields.

    Raises ConfigError listing every problem with its line.
    """
    file = str(path)
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except OSError as e:
        raise ConfigError([ConfigProblem(file, None, "", f"cannot read: {e.strerror}")]) from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError([ConfigProblem(file, line, "", f"not valid YAML: {e}")]) from e
    problems: list[ConfigProblem] = []

    def problem(node: yaml.Node | None, where: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else None
        problems.append(ConfigProblem(file, line, where, message))

    targets: list[Target] = []
    for index, item in enumerate(_target_nodes(root, problem)):
        where = f"targets[{index}]"
        fields = _target_fields(item, where, problem)
        target = _target_from_fields(fields, where, rate, timeout_s, problem)
        if target is not None:
            targets.append(target)
    if problems:
        raise ConfigError(problems)
    return targets


def _target_nodes(root: yaml.Node | None, problem: _Problem) -> list[yaml.Node]:
    expected = "expected a mapping with a non-empty 'targets' list"
    if not isinstance(root, yaml.MappingNode):
        problem(root, "", expected)
        return []
    found: list[yaml.Node] | None = None
    for key, value in root.value:
        if key.value != "targets":
            problem(key, str(key.value), "unknown field; the file has only 'targets'")
        elif not isinstance(value, yaml.SequenceNode) or not value.value:
            problem(value, "targets", expected)
            found = []
        else:
            found = list(value.value)
    if found is None:
        problem(root, "targets", f"missing; {expected}")
    return found or []


def _target_fields(item: yaml.Node, where: str, problem: _Problem) -> dict[str, yaml.ScalarNode]:
    if not isinstance(item, yaml.MappingNode):
        problem(item, where, "expected a mapping with url and optional name, rate, timeout")
        return {}
    fields: dict[str, yaml.ScalarNode] = {}
    for key, value in item.value:
        if key.value not in _TARGET_FIELDS:
            problem(key, f"{where}.{key.value}", "unknown field; expected name, url, rate, timeout")
        elif not isinstance(value, yaml.ScalarNode):
            problem(value, f"{where}.{key.value}", "expected a single value")
        else:
            fields[key.value] = value
    if "url" not in fields:
        problem(item, f"{where}.url", "missing; every target needs a url")
    return fields


def _target_from_fields(
    fields: dict[str, yaml.ScalarNode],
    where: str,
    rate: float,
    timeout_s: float,
    problem: _Problem,
) -> Target | None:
    """The target of one entry, or None if any field is invalid (each one reported)."""

    def parse(field: str, parser: Callable[[str], _T], default: _T) -> _T | None:
        node = fields.get(field)
        if node is None:
            return default
        try:
            return parser(str(node.value))
        except ValueError as e:
            problem(node, f"{where}.{field}", str(e))
            return None

    parsed = parse("url", parse_url, None)
    name = parse("name", check_name, "")
    entry_rate = parse("rate", parse_rate, rate)
    entry_timeout_s = parse("timeout", parse_timeout, timeout_s)
    if parsed is None or name is None or entry_rate is None or entry_timeout_s is None:
        return None
    endpoint, service = parsed
    return Target(name or endpoint.url, endpoint, entry_rate, entry_timeout_s, service)


def attribute(answer: Answer) -> str:
    """The version an answer names: X-Version header, else testpage's body text, else unknown."""
    if answer.version_header is not None and _VERSION.fullmatch(answer.version_header):
        return answer.version_header
    match = _BODY_VERSION.search(answer.body)
    return match.group(1).decode("ascii") if match else UNKNOWN


class ProbeMetrics:
    """The probe's Prometheus metrics (see the module docstring) and a tally for the log."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Register the metrics in ``registry``."""
        self.tally: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._requests = Counter(
            "probe_requests_total",
            "Requests finished, by the version the answer named and the status code.",
            ["target", "version", "code", "reason"],
            registry=registry,
        )
        self._duration = Histogram(
            "probe_request_duration_seconds",
            "Time from the intended send time to the end of the answer.",
            ["target", "version"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._lag = Histogram(
            "probe_schedule_lag_seconds",
            "How late each request left against its schedule.",
            ["target"],
            buckets=_LAG_BUCKETS,
            registry=registry,
        )
        self._in_flight = Gauge(
            "probe_in_flight", "Requests sent and not yet finished.", ["target"], registry=registry
        )
        self._versions: dict[str, set[str]] = collections.defaultdict(set)

    def sent(self, target: str, lag_s: float) -> None:
        """A request left ``lag_s`` seconds after its intended time."""
        self._lag.labels(target).observe(lag_s)
        self._in_flight.labels(target).inc()

    def finished(self, target: str, version: str, code: str, reason: str, seconds: float) -> None:
        """A request finished ``seconds`` after its intended time."""
        seen = self._versions[target]
        if version not in seen:
            # A target that names a new version per request (a request ID, say)
            # must not create unbounded series.
            if len(seen) >= _MAX_VERSIONS:
                version = OTHER
            seen.add(version)
        self._in_flight.labels(target).dec()
        self._requests.labels(target, version, code, reason).inc()
        self._duration.labels(target, version).observe(seconds)
        self.tally[(target, version, code if not reason else f"{code}:{reason}")] += 1


class Load:
    """Open-loop load on a set of targets, recorded into ProbeMetrics."""

    def __init__(
        self,
        targets: Sequence[Target],
        metrics: ProbeMetrics,
        followers: Mapping[str, Follower] | None = None,
    ) -> None:
        """Prepare the load; nothing is sent before ``run``.

        ``followers`` (by target name) pick the endpoint of each request to a
        ``service://`` target.
        """
        self._targets = list(targets)
        self._metrics = metrics
        self._followers = dict(followers or {})
        self._resolver = Resolver()
        self._requests: set[asyncio.Task[None]] = set()

    async def run(self, duration_s: float | None, stop: asyncio.Event) -> None:
        """Send until ``duration_s`` passed (None: forever) or ``stop`` is set; await stragglers."""
        schedulers = {
            asyncio.create_task(self._schedule(target, duration_s)) for target in self._targets
        }
        stopper = asyncio.create_task(stop.wait())
        try:
            while schedulers and not stop.is_set():
                done, _ = await asyncio.wait(
                    schedulers | {stopper}, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done - {stopper}:
                    schedulers.discard(task)
                    task.result()  # a scheduler only ends by finishing; raise if it crashed
        finally:
            stopper.cancel()
            for task in schedulers:
                task.cancel()
            await asyncio.gather(*schedulers, stopper, return_exceptions=True)
            # Each request is bounded by its timeout, so this wait is too.
            if self._requests:
                await asyncio.wait(self._requests)

    async def _schedule(self, target: Target, duration_s: float | None) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        end = duration_s if duration_s is not None else math.inf
        sent = 0
        while True:
            # Intended times come from the start and a count, never from "now", so
            # late wake-ups are caught up instead of accumulating as lost requests.
            # sent / rate (not sent * interval) makes rate x duration requests exact.
            offset = sent / target.rate
            if offset >= end:
                return
            intended = start + offset
            now = loop.time()
            if intended > now:
                await asyncio.sleep(intended - now)
                now = loop.time()
            self._metrics.sent(target.name, now - intended)
            task = loop.create_task(self._request(target, intended))
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)
            sent += 1

    async def _request(self, target: Target, intended: float) -> None:
        loop = asyncio.get_running_loop()
        endpoint, pod_version = target.endpoint, None
        follower = self._followers.get(target.name)
        if follower is not None:
            backend = follower.pick()
            if backend is None:
                self._metrics.finished(
                    target.name, UNATTRIBUTED, "error", "no-endpoints", loop.time() - intended
                )
                return
            endpoint = dataclasses.replace(endpoint, host=backend.address, port=backend.port)
            pod_version = backend.version
        # Without a pod to name it, a failure has no version: "unattributed".
        version, reason = pod_version or UNATTRIBUTED, ""
        try:
            async with asyncio.timeout(target.timeout_s):
                answer = await fetch(endpoint, self._resolver)
        except TimeoutError:
            code, reason = "error", "timeout"
        except FetchError as e:
            code, reason = "error", e.reason
        else:
            code = str(answer.status)
            version = pod_version or attribute(answer)
        self._metrics.finished(target.name, version, code, reason, loop.time() - intended)


def _targets_from_args(args: argparse.Namespace) -> list[Target]:
    """Targets from ``--target`` and ``--config``; raises ValueError or ConfigError."""
    targets = [parse_target_arg(text, args.rate, args.timeout) for text in args.target]
    if args.config is not None:
        targets += load_config(args.config, args.rate, args.timeout)
    if not targets:
        raise ValueError("no targets: give --target URL (repeatable) or --config FILE")
    names = collections.Counter(target.name for target in targets)
    duplicates = sorted(name for name, count in names.items() if count > 1)
    if duplicates:
        raise ValueError(f"target names must be unique; repeated: {', '.join(duplicates)}")
    return targets


class Follower(Protocol):
    """Picks the endpoint of each request (see ``probe_service.ServiceFollower``)."""

    def pick(self) -> Backend | None:
        """A ready endpoint, or None."""
        ...


def _followers(
    targets: list[Target],
    kubeconfig: str | None,
    version_label: str,
    address_map: AddressMap | None,
) -> dict[str, ServiceFollower]:
    services = [t for t in targets if t.service is not None]
    if not services:
        return {}
    api = load_api_client(kubeconfig)
    followers = {}
    for target in services:
        assert target.service is not None
        follower = ServiceFollower(api, target.service, version_label, address_map=address_map)
        follower.start()
        followers[target.name] = follower
    return followers


async def _serve(
    targets: list[Target],
    host: str,
    port: int,
    duration_s: float | None,
    followers: Mapping[str, ServiceFollower],
    *,
    linger_s: float = DEFAULT_LINGER_S,
) -> int:
    registry = CollectorRegistry()
    metrics = ProbeMetrics(registry)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        log.error("probe cannot serve metrics", host=host, port=port, error=str(e))
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        log.info(
            "probe started",
            metrics=f"{host}:{port}",
            targets=[
                f"{t.name} {t.endpoint.url} {t.rate:g}/s timeout {t.timeout_s:g}s" for t in targets
            ],
        )
        plain = [t.name for t in targets if t.service is None]
        if plain:
            log.info(
                "failures are unattributed",
                targets=plain,
                why="a plain URL names a version only in an answer; a timeout, reset or refused "
                "connection counts as version 'unattributed' (follow the Service with a "
                "service:// target to count each against its pod's version)",
            )
        await Load(targets, metrics, followers).run(duration_s, stop)
        summary = {"/".join(key): count for key, count in sorted(metrics.tally.items())}
        log.info("probe load finished", requests=summary)
        if not stop.is_set() and linger_s > 0:
            # The counts of the last seconds are only in /metrics until a scrape reads them.
            log.info("probe serves /metrics a last while for the final scrape", linger_s=linger_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), linger_s)
        log.info("probe exits")
    finally:
        for follower in followers.values():
            follower.stop()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5.0)
    return 0


def _rate_arg(text: str) -> float:
    try:
        return parse_rate(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _address_map_arg(text: str) -> AddressMap:
    try:
        return AddressMap.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _duration_or_zero_arg(text: str) -> float:
    try:
        seconds = parse_duration(text.strip()).total_seconds()
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"expected a duration such as 1m or 0s, got {text!r}")
    return seconds


def _duration_arg(text: str) -> float:
    try:
        return parse_timeout(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def main(argv: Sequence[str] | None = None) -> int:
    """Run the probe; the exit status is 0 after a clean stop, 2 for invalid input."""
    parser = argparse.ArgumentParser(
        prog="autocanary probe",
        description="Open-loop HTTP load with per-version metrics.",
        epilog=(
            "metrics: probe_requests_total{target,version,code,reason}, "
            "probe_request_duration_seconds{target,version}, "
            "probe_schedule_lag_seconds{target}, probe_in_flight{target}"
        ),
    )
    parser.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="[NAME=]URL",
        help="URL to load, optionally named (repeatable)",
    )
    parser.add_argument("--config", type=Path, metavar="FILE", help="YAML file listing targets")
    parser.add_argument(
        "--rate", type=_rate_arg, default=50.0, help="requests per target: 50, 50/s, 3000/m"
    )
    parser.add_argument(
        "--timeout", type=_duration_arg, default=2.0, help="per request, such as 2s (default)"
    )
    parser.add_argument(
        "--duration",
        type=_duration_arg,
        metavar="DURATION",
        help="stop sending after this long, then exit after --linger (default: send until stopped)",
    )
    parser.add_argument(
        "--linger",
        type=_duration_or_zero_arg,
        default=DEFAULT_LINGER_S,
        metavar="DURATION",
        help="after --duration, serve /metrics this long so Prometheus scrapes the final "
        "counts, then exit 0; at least your scrape interval (default 1m; 0s: exit at once)",
    )
    parser.add_argument("--metrics-host", default="0.0.0.0", help="default: all addresses")  # noqa: S104
    parser.add_argument("--metrics-port", type=int, default=9102, help="default: 9102")
    parser.add_argument(
        "--kubeconfig",
        help="for service:// targets: a kubeconfig (default: the pod's in-cluster credentials)",
    )
    parser.add_argument(
        "--version-label",
        default="version",
        help="for service:// targets: the pod label naming the version (default: version)",
    )
    parser.add_argument(
        "--address-map",
        type=_address_map_arg,
        metavar="FROM_CIDR=TO_CIDR",
        help="for service:// targets outside the pod network: dial endpoint addresses in "
        "FROM_CIDR at the same offset in TO_CIDR (the local test bed's loopback twins)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.metrics_port <= 65535:
        parser.error(f"--metrics-port must be between 0 and 65535, got {args.metrics_port}")
    try:
        targets = _targets_from_args(args)
    except ConfigError as e:
        parser.exit(2, f"autocanary probe: invalid config:\n{e}\n")
    except ValueError as e:
        parser.error(str(e))
    try:
        followers = _followers(targets, args.kubeconfig, args.version_label, args.address_map)
    except Exception as e:  # noqa: BLE001 -- any credential problem ends the start, said plainly
        parser.exit(2, f"autocanary probe: cannot reach the Kubernetes API: {e}\n")
    return asyncio.run(
        _serve(
            targets,
            args.metrics_host,
            args.metrics_port,
            args.duration,
            followers,
            linger_s=args.linger,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
