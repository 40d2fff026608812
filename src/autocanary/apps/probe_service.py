"""Following a Service from inside the cluster, so every outcome has the version of its pod.

A probe pointed at a Service's URL learns a version only from an answer
(``X-Version``, the body): a timeout, a reset or a refused connection names
none, so a canary that hangs looks like no canary traffic at all. Pointed at
``service://NAMESPACE/NAME[:PORT]/PATH`` instead, the probe does what
kube-proxy does: it reads the Service's EndpointSlices (label
``kubernetes.io/service-name``), keeps the ready endpoints, and sends each
request to one of them chosen at random; the pod behind each endpoint
(``targetRef``) gives the version from its labels. Every answer and every
failure is then counted against the version of the pod it reached.

The slices and pods are re-read every ``poll_s`` seconds in a thread (a
list, not a watch: simple, and a second's delay is what kube-proxy has too).
RBAC: ``list`` on ``endpointslices`` (discovery.k8s.io) and ``pods`` in the
Service's namespace, nothing more (deploy/example's probe Role).
"""

from __future__ import annotations

import ipaddress
import json
import random
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from kubernetes import client

log = structlog.get_logger(__name__)

SCHEME = "service://"
_REF = re.compile(
    r"service://(?P<ns>[a-z0-9]([-a-z0-9]*[a-z0-9])?)/(?P<name>[a-z0-9]([-a-z0-9]*[a-z0-9])?)"
    r"(:(?P<port>[a-z0-9]([-a-z0-9]*[a-z0-9])?))?(?P<path>/.*)?"
)
_API_TIMEOUT = (5.0, 10.0)


@dataclass(frozen=True)
class ServiceRef:
    """A Service to follow: namespace, name, the endpoint port (name or number), the path."""

    namespace: str
    name: str
    port: str | None
    path: str

    @classmethod
    def parse(cls, text: str) -> ServiceRef:
        """Parse ``service://NAMESPACE/NAME[:PORT][/PATH]``; ValueError says the form."""
        match = _REF.fullmatch(text.strip())
        if match is None:
            raise ValueError(
                f"expected service://NAMESPACE/NAME[:PORT][/PATH] (PORT: the endpoint port's "
                f"name or number), got {text!r}"
            )
        return cls(match["ns"], match["name"], match["port"], match["path"] or "/")

    @property
    def url(self) -> str:
        """The Service's in-cluster URL (for the Host header and logs)."""
        return f"http://{self.name}.{self.namespace}.svc{self.path}"


@dataclass(frozen=True)
class Backend:
    """One ready endpoint: where to connect and the version of the pod behind it."""

    pod: str
    address: str
    port: int
    version: str


@dataclass(frozen=True)
class AddressMap:
    """Dial endpoint addresses of ``source`` at the same offset in ``target``.

    For a probe outside the pod network: the local test bed serves pod IP
    ``10.<n>.c.d`` on its loopback twin ``127.<n>.c.d`` (the API server refuses
    loopback addresses in EndpointSlices).
    """

    source: ipaddress.IPv4Network
    target: ipaddress.IPv4Network

    @classmethod
    def parse(cls, text: str) -> AddressMap:
        """Parse ``FROM_CIDR=TO_CIDR`` (same prefix length); ValueError says the form."""
        expected = (
            f"expected FROM_CIDR=TO_CIDR of one size, e.g. 10.64.0.0/16=127.64.0.0/16, got {text!r}"
        )
        source, sep, target = text.partition("=")
        try:
            mapped = cls(
                ipaddress.IPv4Network(source.strip()), ipaddress.IPv4Network(target.strip())
            )
        except ValueError:
            raise ValueError(expected) from None
        if not sep or mapped.source.prefixlen != mapped.target.prefixlen:
            raise ValueError(expected)
        return mapped

    def apply(self, address: str) -> str:
        """``address`` moved into ``target`` when it lies in ``source``, else unchanged."""
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            return address
        if ip not in self.source:
            return address
        offset = int(ip) - int(self.source.network_address)
        return str(ipaddress.IPv4Address(int(self.target.network_address) + offset))


def backends(
    slices: Sequence[Mapping[str, Any]],
    pods: Mapping[str, Mapping[str, str]],
    port: str | None,
    version_label: str,
    address_map: AddressMap | None = None,
) -> tuple[Backend, ...]:
    """The ready endpoints of ``slices``, each with its pod's version (pure; see the module).

    ``pods`` maps pod names to their labels. An endpoint whose pod is unknown,
    or carries no version label, counts as version ``unknown``.
    """
    found: list[Backend] = []
    for slice_ in slices:
        numbers = {
            str(p.get("name") or ""): int(p["port"])
            for p in slice_.get("ports") or []
            if p.get("port") is not None
        }
        if port is None:
            number = next(iter(numbers.values()), None)
        elif port.isdigit() and int(port) in numbers.values():
            number = int(port)
        else:
            number = numbers.get(port)
        if number is None:
            continue
        for endpoint in slice_.get("endpoints") or []:
            # kube-proxy sends only to ready endpoints (terminating ones drain).
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            ref = endpoint.get("targetRef") or {}
            pod = str(ref.get("name") or "") if ref.get("kind", "Pod") == "Pod" else ""
            version = (pods.get(pod) or {}).get(version_label) or "unknown"
            found.extend(
                Backend(
                    pod,
                    address_map.apply(str(address)) if address_map else str(address),
                    number,
                    version,
                )
                for address in (endpoint.get("addresses") or [])[:1]
            )
    return tuple(sorted(found, key=lambda b: (b.pod, b.address, b.port)))


class ServiceFollower:
    """Keeps the ready endpoints of one Service, re-read every ``poll_s`` seconds."""

    def __init__(
        self,
        api: client.ApiClient,
        ref: ServiceRef,
        version_label: str,
        *,
        address_map: AddressMap | None = None,
        poll_s: float = 1.0,
    ) -> None:
        """Prepare; :meth:`start` reads once, then keeps reading in a thread."""
        self.ref = ref
        self.version_label = version_label
        self.address_map = address_map
        self._discovery = client.DiscoveryV1Api(api)
        self._core = client.CoreV1Api(api)
        self._poll_s = poll_s
        self._backends: tuple[Backend, ...] = ()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Not for security: spreading requests over endpoints, as kube-proxy does.
        self._rng = random.Random()  # noqa: S311

    def start(self) -> None:
        """Read once (errors logged), then follow in a background thread."""
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="service-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop following."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def pick(self) -> Backend | None:
        """A ready endpoint chosen at random, or None when there is none."""
        current = self._backends
        return self._rng.choice(current) if current else None

    @property
    def backends(self) -> tuple[Backend, ...]:
        """The ready endpoints as last read."""
        return self._backends

    def refresh(self) -> None:
        """Read the slices and pods now; on failure keep what was known and log why."""
        ns = self.ref.namespace
        try:
            slices = self._items(
                self._discovery.list_namespaced_endpoint_slice,
                ns,
                label_selector=f"kubernetes.io/service-name={self.ref.name}",
            )
            pods = {
                str(p["metadata"]["name"]): dict(p["metadata"].get("labels") or {})
                for p in self._items(self._core.list_namespaced_pod, ns)
            }
        except Exception as e:  # noqa: BLE001 -- an API hiccup keeps the last endpoints
            log.warning("cannot read the service's endpoints", service=self.ref.url, error=str(e))
            return
        found = backends(slices, pods, self.ref.port, self.version_label, self.address_map)
        if found != self._backends:
            log.info(
                "service endpoints",
                service=self.ref.url,
                endpoints=[f"{b.pod} {b.address}:{b.port} {b.version}" for b in found],
            )
        self._backends = found

    def _items(self, call: Any, namespace: str, **kwargs: Any) -> list[dict[str, Any]]:
        response = call(namespace, _preload_content=False, _request_timeout=_API_TIMEOUT, **kwargs)
        items: list[dict[str, Any]] = json.loads(response.data)["items"]
        return items

    def _run(self) -> None:
        while not self._stop.wait(self._poll_s):
            self.refresh()
