"""Leader election on a coordination.k8s.io Lease, so only one replica acts.

Expiry is judged on this process's own monotonic clock: a Lease whose record
has not changed for ``leaseDuration`` since we first saw it is free, whatever
the other replica's wall clock says (client-go does the same). A leader that
cannot renew within ``renewDeadline`` stops acting before anyone else may
take over at ``leaseDuration``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from autocanary.adapters.kubernetes import KubeClient
from autocanary.config.models import LeaderElectionConfig
from autocanary.errors import AutocanaryError, NotHolder, StateConflict

log = structlog.get_logger("autocanary.adapters.leader")


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Acquires and renews a Lease in a background thread; :meth:`is_leader` tells the jobs."""

    def __init__(
        self,
        kube: KubeClient,
        cfg: LeaderElectionConfig,
        namespace: str,
        identity: str,
        *,
        on_change: Callable[[bool], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Prepare to contend for ``namespace/cfg.leaseName`` as ``identity``."""
        self.kube = kube
        self.cfg = cfg
        self.namespace = namespace
        self.identity = identity
        self._on_change = on_change
        self._monotonic = monotonic
        self._renewed_at: float | None = None  # monotonic time of our last successful renew
        self._observed: tuple[str, float] | None = None  # (record fingerprint, first seen at)
        self._leading = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_contact: float | None = None  # monotonic time of the last API answer

    # ---- state -----------------------------------------------------------------------------

    def is_leader(self) -> bool:
        """Whether this replica holds the lease and renewed it within the renew deadline."""
        with self._lock:
            return (
                self._leading
                and self._renewed_at is not None
                and self._monotonic() - self._renewed_at < self.cfg.renew_deadline.total_seconds()
            )

    def fence(self) -> Callable[[], float]:
        """The write fence of a tick (see ``kubernetes.fenced``): the time a write may take."""

        def check() -> float:
            with self._lock:
                since = (
                    self._monotonic() - self._renewed_at
                    if self._leading and self._renewed_at is not None
                    else math.inf
                )
            if since >= self.cfg.renew_deadline.total_seconds():
                raise NotHolder("this replica no longer holds the leader Lease")
            return self.cfg.lease_duration.total_seconds() - since

        return check

    def _set_leading(self, leading: bool) -> None:
        with self._lock:
            changed = leading != self._leading
            self._leading = leading
            if leading:
                self._renewed_at = self._monotonic()
        if changed:
            log.info("leadership changed", leader=leading, identity=self.identity)
            if self._on_change is not None:
                self._on_change(leading)

    # ---- one attempt -----------------------------------------------------------------------

    def _spec(self, acquire: bool, transitions: int) -> dict[str, Any]:
        now = _micro_time()
        spec: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.cfg.lease_duration.total_seconds()),
            "renewTime": now,
            "leaseTransitions": transitions,
        }
        if acquire:
            spec["acquireTime"] = now
        return spec

    def try_acquire_or_renew(self) -> bool:
        """One round of the election; returns whether this replica leads afterwards."""
        name = self.cfg.lease_name
        try:
            lease = self.kube.read_lease(self.namespace, name)
            self.last_contact = self._monotonic()
            if lease is None:
                self.kube.create_lease(
                    self.namespace,
                    {
                        "apiVersion": "coordination.k8s.io/v1",
                        "kind": "Lease",
                        "metadata": {"name": name, "namespace": self.namespace},
                        "spec": self._spec(acquire=True, transitions=0),
                    },
                )
                self._set_leading(True)
                return True
            spec = lease.get("spec") or {}
            holder = spec.get("holderIdentity") or ""
            transitions = int(spec.get("leaseTransitions") or 0)
            if holder == self.identity:
                lease["spec"] = {**spec, **self._spec(acquire=False, transitions=transitions)}
            elif holder and not self._expired(lease):
                self._set_leading(False)
                return False
            else:
                lease["spec"] = {**spec, **self._spec(acquire=True, transitions=transitions + 1)}
            self.kube.replace_lease(self.namespace, lease)
            self._set_leading(True)
            return True
        except StateConflict:
            # Someone else wrote the lease between our read and write: they won this round.
            self._set_leading(False)
            return False
        except AutocanaryError as e:
            log.warning("leader election round failed", error=str(e))
            # Keep leading until the renew deadline passes (is_leader checks it); past it,
            # say so, so on_change (the leader gauge) does not keep reporting leadership.
            leading = self.is_leader()
            if not leading:
                self._set_leading(False)
            return leading

    def _expired(self, lease: dict[str, Any]) -> bool:
        spec = lease.get("spec") or {}
        fingerprint = f"{spec.get('holderIdentity')}|{spec.get('renewTime')}"
        now = self._monotonic()
        if self._observed is None or self._observed[0] != fingerprint:
            self._observed = (fingerprint, now)
            return False
        duration = float(
            spec.get("leaseDurationSeconds") or self.cfg.lease_duration.total_seconds()
        )
        return now - self._observed[1] > duration

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Contend in a background thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._loop, name="leader-election", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        period = self.cfg.retry_period.total_seconds()
        while not self._stop.is_set():
            self.try_acquire_or_renew()
            self._stop.wait(period)

    def stop(self, release: bool = True) -> None:
        """Stop contending; if leading and ``release``, hand the lease back at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.cfg.retry_period.total_seconds() + 20)
        if release and self._leading:
            self.release()
        self._set_leading(False)

    def release(self) -> None:
        """Clear the holder so another replica takes over without waiting for expiry.

        This replica stops leading first, so two never act at once.
        """
        self._set_leading(False)
        try:
            lease = self.kube.read_lease(self.namespace, self.cfg.lease_name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease["spec"] = {
                **lease["spec"],
                "holderIdentity": "",
                "leaseDurationSeconds": 1,
                "renewTime": _micro_time(),
            }
            self.kube.replace_lease(self.namespace, lease)
            log.info("lease released", identity=self.identity)
        except AutocanaryError as e:
            log.warning("could not release the lease; it expires on its own", error=str(e))
