"""The pod network of one local control plane: pod IPs, and where a pod's process really listens.

KWOK hands each pod an IP from ``pod_cidr`` (``10.<n>.0.0/16``), written into the
pod's status like any CNI would. The API server refuses loopback addresses in
EndpointSlices (``ValidateNonSpecialIP``), so pod IPs cannot be loopback
addresses themselves; instead each pod IP has one loopback twin, ``127.<n>.c.d``
for ``10.<n>.c.d``, where the pod's process binds (all of 127.0.0.0/8 is
loopback on Linux). That one fixed translation stands in for the routing of a
real pod network; everything else (which pods exist, their IPs and ports) is
read from the Kubernetes API.

Service cluster IPs are loopback addresses themselves, ``127.1.<n>.0/24``
(``service_cidr``): the API server accepts a loopback service range (only
endpoint addresses are refused), and the test bed's kube-proxy listens on a
Service's cluster IP and port as kube-proxy's rules catch it, so a client that
dials cluster IPs, as a gateway in native load-balancing mode does, stays on
loopback. ``127.1.0.0/16`` lies outside every pod twin range (``n`` >= 64).

``<n>`` is chosen at random per control plane and reserved with a lock file
held for the control plane's life, so two control planes on one machine (other
test runs at the same time) never hand out the same address.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import secrets
import tempfile
from pathlib import Path
from typing import IO

from autocanary_testbed.errors import HarnessError

__all__ = ["PodNetwork"]

_FIRST_OCTET = 64
_LAST_OCTET = 250
# One place per machine, whatever TMPDIR each run has: /run/lock where there is one.
_LOCK_ROOT = Path("/run/lock")
_LOCK_DIR = (
    _LOCK_ROOT
    if _LOCK_ROOT.is_dir() and os.access(_LOCK_ROOT, os.W_OK)
    else Path(tempfile.gettempdir())
) / "autocanary-pod-networks"


class PodNetwork:
    """Pod IPs ``10.<n>.0.0/16``, served on their loopback twins ``127.<n>.0.0/16``.

    Create one with :meth:`reserve`; :meth:`release` gives the range back.
    """

    def __init__(self, octet: int, lock: IO[bytes] | None = None) -> None:
        """Use second octet ``octet`` (prefer :meth:`reserve`, which also locks it)."""
        if not 0 < octet < 255:
            raise ValueError(f"the pod network's second octet must be in 1-254, got {octet}")
        self.octet = octet
        self._lock = lock

    @classmethod
    def reserve(cls) -> PodNetwork:
        """Pick a free range at random and hold its lock until :meth:`release`.

        Raises HarnessError when every range is held by another control plane.
        """
        _LOCK_DIR.mkdir(parents=True, exist_ok=True)
        octets = list(range(_FIRST_OCTET, _LAST_OCTET + 1))
        # A random start, then every range in turn: collisions stay unlikely, never fatal.
        start = secrets.randbelow(len(octets))
        for octet in octets[start:] + octets[:start]:
            lock = (_LOCK_DIR / f"{octet}.lock").open("wb")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                lock.close()
                continue
            lock.write(f"{os.getpid()}\n".encode())
            lock.flush()
            return cls(octet, lock)
        raise HarnessError(f"every pod network range is in use (lock files in {_LOCK_DIR})")

    def release(self) -> None:
        """Give the range back (the lock file stays; its lock is what counts). Idempotent."""
        if self._lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    @property
    def pod_cidr(self) -> str:
        """The range KWOK hands pod IPs from, e.g. ``10.77.0.0/16``."""
        return f"10.{self.octet}.0.0/16"

    @property
    def service_cidr(self) -> str:
        """The range Service cluster IPs come from, e.g. ``127.1.77.0/24`` (loopback)."""
        return f"127.1.{self.octet}.0/24"

    @property
    def kubernetes_service_ip(self) -> str:
        """The ``kubernetes`` Service's cluster IP: the first address of :attr:`service_cidr`."""
        return f"127.1.{self.octet}.1"

    @property
    def node_ip(self) -> str:
        """The KWOK node's address (a pod network address no pod gets; nothing dials it)."""
        return f"10.{self.octet}.255.254"

    def host_ip(self, pod_ip: str) -> str:
        """Where the pod with ``pod_ip`` listens, its loopback twin: ``10.n.c.d`` -> ``127.n.c.d``.

        Raises ValueError for an address outside this pod network.
        """
        address = ipaddress.ip_address(pod_ip)
        if address not in ipaddress.ip_network(self.pod_cidr):
            raise ValueError(f"{pod_ip} is not in the pod network {self.pod_cidr}")
        return "127." + str(address).split(".", 1)[1]

    def host_address(self, pod_ip: str, port: int) -> str:
        """``host_ip(pod_ip):port``, the address to dial for a pod's port."""
        return f"{self.host_ip(pod_ip)}:{port}"

    def relabel_to_host(self, source: str, target: str) -> dict[str, object]:
        """A Prometheus relabel rule rewriting ``10.n.c.d:port`` in ``source`` to its twin.

        The same translation as :meth:`host_ip`, for Prometheus's own dialing.
        """
        return {
            "source_labels": [source],
            "regex": rf"10\.{self.octet}\.(\d+)\.(\d+):(\d+)",
            "target_label": target,
            "replacement": f"127.{self.octet}.${{1}}.${{2}}:${{3}}",
        }

    def __repr__(self) -> str:
        return f"PodNetwork({self.pod_cidr} served on 127.{self.octet}.0.0/16)"
