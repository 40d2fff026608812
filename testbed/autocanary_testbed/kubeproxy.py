"""kube-proxy in miniature: a Service's EndpointSlices decide a ServiceProxy's backends.

``ServiceEndpoints`` watches the EndpointSlices that the endpoint-slice
controller (in kube-controller-manager) writes for one Service, and gives the
proxy the addresses kube-proxy would balance over: the ``ready`` endpoints,
or, when there are none, the ones still ``serving`` while ``terminating`` (as
kube-proxy does since Kubernetes 1.28). A pod leaves the rotation the moment
its endpoint turns terminating or not ready; nothing but the Kubernetes API
says which pods exist. Addresses are pod IPs, dialled on their loopback twins
(see :mod:`autocanary_testbed.network`).

It listens on 127.0.0.1 and a free port, or, given ``cluster_ip``, on the
Service's cluster IP and port as kube-proxy's rules catch them (the test bed's
cluster IPs are loopback addresses, see :mod:`autocanary_testbed.network`), for
clients that dial cluster IPs themselves, such as a gateway in native
load-balancing mode.

Like kube-proxy it runs as a process of its own (``KubeProxyProcess``, which
starts ``python -m autocanary_testbed.kubeproxy``), so the test harness's own
threads never slow the traffic down; it writes its address and backends to a
state file the harness reads.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

import structlog
from kubernetes import client, config, watch
from kubernetes.client import ApiException

from autocanary_testbed.errors import HarnessError
from autocanary_testbed.network import PodNetwork
from autocanary_testbed.procs import ManagedProcess, free_port
from autocanary_testbed.serviceproxy import ServiceProxy

log = structlog.get_logger(__name__)

_SERVICE_NAME_LABEL = "kubernetes.io/service-name"
_API_TIMEOUT = (5.0, 10.0)
_WATCH_S = 2  # server-side watch timeout: how soon a stop is noticed
_RETRY_S = 0.5
_STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class SliceEndpoint:
    """One endpoint of a Service as an EndpointSlice states it."""

    address: str  # pod IP
    port: int
    pod: str
    ready: bool
    serving: bool
    terminating: bool


def endpoints_of(slices: Iterable[Any], port_name: str) -> list[SliceEndpoint]:
    """The IPv4 endpoints of ``slices`` (V1EndpointSlice) on the Service port ``port_name``.

    Unset conditions read as the API defines them: ready and serving true,
    terminating false.
    """
    found = []
    for item in slices:
        if item.address_type != "IPv4":
            continue
        ports = [p.port for p in item.ports or [] if (p.name or "") == port_name and p.port]
        if not ports:
            continue
        for endpoint in item.endpoints or []:
            conditions = endpoint.conditions
            ready = conditions is None or conditions.ready is not False
            found.append(
                SliceEndpoint(
                    address=endpoint.addresses[0],
                    port=int(ports[0]),
                    pod=endpoint.target_ref.name if endpoint.target_ref else "",
                    ready=ready,
                    serving=ready
                    if conditions is None or conditions.serving is None
                    else bool(conditions.serving),
                    terminating=bool(conditions.terminating) if conditions else False,
                )
            )
    return found


def rotation(endpoints: Iterable[SliceEndpoint]) -> list[SliceEndpoint]:
    """The endpoints kube-proxy balances over: the ready ones, else serving terminating ones."""
    every = list(endpoints)
    ready = [e for e in every if e.ready]
    if ready:
        return ready
    return [e for e in every if e.serving and e.terminating]


class ServiceEndpoints:
    """Keeps ``proxy``'s backends equal to the rotation of Service ``namespace/service``."""

    def __init__(
        self,
        api_client: client.ApiClient,
        network: PodNetwork,
        namespace: str,
        service: str,
        proxy: ServiceProxy,
        *,
        port_name: str = "",
        on_change: Callable[[list[str]], None] | None = None,
    ) -> None:
        """Follow the Service's port named ``port_name`` ('' for an unnamed only port).

        ``on_change`` hears the new backends each time they change.
        """
        # Any: the watch and the list hand back the same models; their Optional fields
        # are always set on objects read from the API server.
        self._discovery: Any = client.DiscoveryV1Api(api_client)
        self._network = network
        self.namespace = namespace
        self.service = service
        self.proxy = proxy
        self.port_name = port_name
        self._on_change = on_change
        self._slices: dict[str, Any] = {}
        # Held while the slices and the proxy's backends change together, so a reader
        # never sees a slice the backends do not follow yet.
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        """List the slices once (so the proxy starts right), then watch them in a thread."""
        self._thread = threading.Thread(target=self._run, name="service-endpoints", daemon=True)
        self._thread.start()
        if not self._synced.wait(_STOP_TIMEOUT_S):
            raise HarnessError(f"EndpointSlices of {self.namespace}/{self.service} not listed")
        return self

    def stop(self) -> None:
        """Stop watching; the proxy keeps its last backends."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(_WATCH_S + _STOP_TIMEOUT_S)
            if self._thread.is_alive():
                raise HarnessError("EndpointSlice watch did not stop")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def endpoints(self) -> list[SliceEndpoint]:
        """Every endpoint of the Service as last seen, in any condition."""
        with self._lock:
            return endpoints_of(self._slices.values(), self.port_name)

    # ---- the watch -------------------------------------------------------------------------

    def _run(self) -> None:
        selector = f"{_SERVICE_NAME_LABEL}={self.service}"
        version = ""
        while not self._stop.is_set():
            try:
                if not version:
                    listed = self._discovery.list_namespaced_endpoint_slice(
                        self.namespace, label_selector=selector, _request_timeout=_API_TIMEOUT
                    )
                    with self._lock:
                        self._slices = {s.metadata.name: s for s in listed.items}
                        self._apply()
                    version = listed.metadata.resource_version
                    self._synced.set()
                version = self._follow(selector, version)
            except ApiException as e:
                if e.status != 410:  # 410: our version is too old; list afresh
                    log.warning("EndpointSlice watch failed", error=str(e))
                    self._stop.wait(_RETRY_S)
                version = ""
            except Exception as e:  # noqa: BLE001 -- the watch must outlive a broken connection
                log.warning("EndpointSlice watch failed", error=str(e))
                version = ""
                self._stop.wait(_RETRY_S)

    def _follow(self, selector: str, version: str) -> str:
        stream: Any = watch.Watch()  # type: ignore[no-untyped-call]  # untyped in kubernetes
        for event in stream.stream(
            self._discovery.list_namespaced_endpoint_slice,
            self.namespace,
            label_selector=selector,
            resource_version=version,
            timeout_seconds=_WATCH_S,
            _request_timeout=(5.0, _WATCH_S + 10.0),
        ):
            kind, item = event["type"], event["object"]
            if kind == "ERROR":
                raise ApiException(status=410, reason="watch error")
            with self._lock:
                if kind == "DELETED":
                    self._slices.pop(item.metadata.name, None)
                else:
                    self._slices[item.metadata.name] = item
                self._apply()
            version = item.metadata.resource_version
            if self._stop.is_set():
                stream.stop()
        return version

    def _apply(self) -> None:
        chosen = rotation(self.endpoints())
        backends = sorted(self._network.host_address(e.address, e.port) for e in chosen)
        if backends != sorted(self.proxy.backends):
            log.info(
                "service endpoints changed",
                service=f"{self.namespace}/{self.service}",
                backends=backends,
            )
            self.proxy.set_backends(backends)
            if self._on_change is not None:
                self._on_change(backends)


class KubeProxyProcess:
    """``python -m autocanary_testbed.kubeproxy`` for one Service, as a managed process."""

    def __init__(
        self,
        kubeconfig: Path,
        network: PodNetwork,
        namespace: str,
        service: str,
        workdir: Path,
        *,
        port_name: str = "",
        cluster_ip: tuple[str, int] | None = None,
    ) -> None:
        """Prepare; :meth:`start` runs it. Its log and state file go to ``workdir``.

        ``cluster_ip`` (address, port) is the Service's cluster IP and port to listen
        on; without it the proxy listens on 127.0.0.1 and a free port.
        """
        self._argv_tail = [
            f"--kubeconfig={kubeconfig}",
            f"--pod-network={network.octet}",
            f"--namespace={namespace}",
            f"--service={service}",
            f"--port-name={port_name}",
        ]
        self.workdir = workdir
        self._service = service
        self.state_path = workdir / f"kube-proxy-{service}.json"
        self._cluster_ip = cluster_ip
        self._host = cluster_ip[0] if cluster_ip else "127.0.0.1"
        self._port: int | None = None
        self._process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        """``http://<host>:<port>``, where the Service answers."""
        if self._port is None:
            raise HarnessError("kube-proxy not started")
        return f"http://{self._host}:{self._port}"

    @property
    def backends(self) -> list[str]:
        """The backends (``host:port``) in the rotation now."""
        try:
            state: dict[str, Any] = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return []
        return [str(b) for b in state["backends"]]

    def start(self) -> Self:
        """Start the process; return once it listens and has listed the EndpointSlices."""
        self._port = self._cluster_ip[1] if self._cluster_ip else free_port()
        self._process = ManagedProcess.start(
            f"kube-proxy-{self._service}",
            [
                sys.executable,
                "-m",
                "autocanary_testbed.kubeproxy",
                *self._argv_tail,
                f"--host={self._host}",
                f"--port={self._port}",
                f"--state-file={self.state_path}",
            ],
            log_dir=self.workdir,
        )
        self._process.wait_ready(self.state_path.exists, _STOP_TIMEOUT_S * 3, "following")
        return self

    def stop(self) -> None:
        """Stop the process (SIGTERM). Idempotent."""
        if self._process is not None:
            process, self._process = self._process, None
            process.stop(_STOP_TIMEOUT_S)


def _write_state(path: Path, url: str, backends: Sequence[str]) -> None:
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(json.dumps({"url": url, "backends": list(backends)}))
    os.replace(partial, path)


class _Terminated(Exception):
    """SIGTERM arrived."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def main(argv: Sequence[str] | None = None) -> int:
    """Run one Service's proxy until SIGTERM: ``python -m autocanary_testbed.kubeproxy``."""
    parser = argparse.ArgumentParser(prog="python -m autocanary_testbed.kubeproxy")
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--pod-network", type=int, required=True, help="second octet n")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--port-name", default="")
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address to listen on")
    parser.add_argument("--port", type=int, required=True, help="port on --host")
    parser.add_argument("--state-file", type=Path, required=True)
    args = parser.parse_args(argv)
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )
    signal.signal(signal.SIGTERM, _raise_terminated)
    api = config.new_client_from_config(config_file=str(args.kubeconfig))  # type: ignore[no-untyped-call]
    if not ipaddress.ip_address(args.host).is_loopback:
        parser.error(f"--host must be a loopback address, got {args.host}")
    proxy = ServiceProxy(port=args.port, host=args.host)
    try:
        proxy.start()
        follower = ServiceEndpoints(
            api,
            PodNetwork(args.pod_network),
            args.namespace,
            args.service,
            proxy,
            port_name=args.port_name,
            on_change=lambda backends: _write_state(args.state_file, proxy.url, backends),
        )
        with follower:
            _write_state(args.state_file, proxy.url, proxy.backends)
            while True:
                signal.pause()
    except _Terminated:
        return 0
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        proxy.stop()


if __name__ == "__main__":
    sys.exit(main())
