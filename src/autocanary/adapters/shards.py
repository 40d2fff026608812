"""Rollouts sharded across the daemon's replicas, one coordination.k8s.io Lease per shard.

A rollout belongs to one of a fixed number of shards, by a consistent hash of
its ``namespace/name`` (jump consistent hashing: growing the shard count moves
only the rollouts the new shards take). Each shard has a Lease
(``<leaseName>-shard-<i>``); a replica acts on a rollout only while it holds
its shard's Lease, and the write fence (:func:`autocanary.adapters.kubernetes.fenced`)
checks that again before every write.

How many shards a replica holds is its fair share of the live replicas. Each
replica publishes its presence in a Lease of its own (``<leaseName>-member-<hash>``,
as each kube-apiserver publishes its identity in a Lease), so a replica that
holds no shard yet is counted too. Replicas sorted by identity get
``shards // members`` shards each, the first ``shards % members`` of them one
more. A replica holding more than its share releases the excess (after its
rollouts' running ticks end); one holding fewer takes free shards: never
created, released, or expired. Nothing but Leases is written: no protocol
between replicas beyond the API server's optimistic concurrency.

Timing is client-go's leader election, per shard. Expiry is judged on this
process's monotonic clock: a Lease whose record has not changed for its
``leaseDurationSeconds`` since this replica first saw it is free, whatever
any wall clock says. A holder stops acting ``renewDeadline`` after the start
of its last successful renewal, while no one else may take the shard before
``leaseDuration`` after it; a write is sent only with the time left until then
as its deadline.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from autocanary.adapters.kubernetes import KubeClient
from autocanary.config.models import LeaderElectionConfig
from autocanary.errors import AutocanaryError, NotHolder, StateConflict
from autocanary.rollout.revision import JSON

log = structlog.get_logger("autocanary.adapters.shards")

#: Label on every shard Lease; its value is the configured leaseName.
SHARD_LABEL = "autocanary.io/shard-of"
#: Label on every member Lease; its value is the configured leaseName.
MEMBER_LABEL = "autocanary.io/member-of"
#: A member Lease silent for this many lease durations is deleted by whoever sees it.
_MEMBER_GARBAGE_DURATIONS = 4


# ---- pure parts ------------------------------------------------------------------------------


def _jump(key: int, buckets: int) -> int:
    """Lamping and Veach's jump consistent hash: ``key`` into ``range(buckets)``."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) % (1 << 64)
        j = int((b + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return b


def shard_of(namespace: str, name: str, shards: int) -> int:
    """The shard of rollout ``namespace/name`` among ``shards``: the same in every replica."""
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).digest()
    return _jump(int.from_bytes(digest[:8], "big"), shards)


def fair_shares(members: Sequence[str], shards: int) -> dict[str, int]:
    """How many shards each live replica should hold; the counts add up to ``shards``."""
    ordered = sorted(set(members))
    if not ordered:
        return {}
    base, extra = divmod(shards, len(ordered))
    return {member: base + (1 if rank < extra else 0) for rank, member in enumerate(ordered)}


def shard_lease_name(lease_name: str, shard: int) -> str:
    """The Lease of ``shard``."""
    return f"{lease_name}-shard-{shard}"


def member_lease_name(lease_name: str, identity: str) -> str:
    """The presence Lease of replica ``identity`` (hashed: any identity makes a valid name)."""
    return f"{lease_name}-member-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _spec(lease: JSON | None) -> dict[str, Any]:
    return dict((lease or {}).get("spec") or {})


def _holder(lease: JSON | None) -> str:
    return str(_spec(lease).get("holderIdentity") or "")


# ---- the manager -----------------------------------------------------------------------------


@dataclass
class _Held:
    """A shard this replica holds: when its last renewal started, the Lease as written."""

    renewed_at: float
    lease: JSON


class ShardManager:
    """Holds this replica's fair share of the shard Leases; tells the daemon which it may act on."""

    def __init__(
        self,
        kube: KubeClient,
        cfg: LeaderElectionConfig,
        namespace: str,
        identity: str,
        *,
        busy: Callable[[int], bool] = lambda shard: False,
        on_change: Callable[[list[int]], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Prepare to hold shards of ``cfg`` in ``namespace`` as ``identity``.

        ``busy(shard)`` says whether a tick of one of the shard's rollouts is
        running: a shard given back is released only once it is not.
        ``on_change`` hears the shards acted on whenever they change.
        """
        self.kube = kube
        self.cfg = cfg
        self.shards = cfg.shards
        self.namespace = namespace
        self.identity = identity
        self._busy = busy
        self._on_change = on_change
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._held: dict[int, _Held] = {}
        self._draining: set[int] = set()
        self._observed: dict[str, tuple[str, float]] = {}  # lease name -> (record, first seen)
        self._member_lease: JSON | None = None
        self._acting: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_contact: float | None = None  # monotonic time of the last API answer
        self.members: list[str] = []  # the live replicas seen in the last round

    # ---- what the daemon asks ----------------------------------------------------------------

    def shard_of(self, namespace: str, name: str) -> int:
        """The shard of rollout ``namespace/name``."""
        return shard_of(namespace, name, self.shards)

    def write_window(self, shard: int) -> float:
        """Seconds a write about ``shard`` may still take; 0 when this replica must not act."""
        with self._lock:
            held = self._held.get(shard)
            if held is None or shard in self._draining:
                return 0.0
            since = self._monotonic() - held.renewed_at
        if since >= self.cfg.renew_deadline.total_seconds():
            return 0.0
        return self.cfg.lease_duration.total_seconds() - since

    def may_act(self, shard: int) -> bool:
        """Whether this replica acts on ``shard``'s rollouts now."""
        return self.write_window(shard) > 0

    def fence(self, shard: int) -> Callable[[], float]:
        """The write fence of a tick on one of ``shard``'s rollouts (see ``kubernetes.fenced``)."""

        def check() -> float:
            left = self.write_window(shard)
            if left <= 0:
                raise NotHolder(f"this replica no longer holds shard {shard}")
            return left

        return check

    def acting(self) -> list[int]:
        """The shards this replica acts on now."""
        return [shard for shard in range(self.shards) if self.may_act(shard)]

    # ---- one round ---------------------------------------------------------------------------

    def run_round(self) -> None:
        """Renew, give back, take: one round of holding this replica's fair share."""
        try:
            self._publish_presence()
            members = self._live_members()
            leases = self._shard_leases()
            self.last_contact = self._monotonic()
        except AutocanaryError as e:
            # Shards held stay acted on until their renew deadline (write_window checks it).
            log.warning("shard round failed", error=str(e), identity=self.identity)
            self._tell()
            return
        self.members = members
        target = fair_shares(members, self.shards).get(self.identity, 0)
        self._renew_or_drop(leases)
        self._give_back(target)
        self._take(target, leases)
        self._tell()

    def _publish_presence(self) -> None:
        name = member_lease_name(self.cfg.lease_name, self.identity)
        body = self._member_lease or self.kube.read_lease(self.namespace, name)
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.cfg.lease_duration.total_seconds()),
            "renewTime": _micro_time(),
        }
        if body is None:
            self._member_lease = self.kube.create_lease(
                self.namespace, self._new_lease(name, MEMBER_LABEL, spec)
            )
            return
        body["spec"] = {**_spec(body), **spec}
        try:
            self._member_lease = self.kube.replace_lease(self.namespace, body)
        except StateConflict:
            self._member_lease = None  # read afresh next round
            raise

    def _new_lease(self, name: str, label: str, spec: dict[str, Any]) -> JSON:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": {label: self.cfg.lease_name},
            },
            "spec": spec,
        }

    def _live_members(self) -> list[str]:
        live = {self.identity}
        for lease in self.kube.list_leases(self.namespace, f"{MEMBER_LABEL}={self.cfg.lease_name}"):
            holder = _holder(lease)
            silent = self._silent_for(lease)
            if holder and silent <= _duration(lease, self.cfg):
                live.add(holder)
            elif holder != self.identity and silent > _MEMBER_GARBAGE_DURATIONS * _duration(
                lease, self.cfg
            ):
                self._delete_quietly(lease)
        return sorted(live)

    def _delete_quietly(self, lease: JSON) -> None:
        """Remove a long-dead replica's presence Lease (a pod name is never reused)."""
        try:
            self.kube.delete_lease(self.namespace, lease)
        except AutocanaryError as e:
            log.info("could not delete a dead replica's Lease", error=str(e))

    def _shard_leases(self) -> dict[int, JSON]:
        found: dict[int, JSON] = {}
        for lease in self.kube.list_leases(self.namespace, f"{SHARD_LABEL}={self.cfg.lease_name}"):
            name = str(lease["metadata"]["name"])
            prefix = shard_lease_name(self.cfg.lease_name, 0)[:-1]
            index = name.removeprefix(prefix)
            if name.startswith(prefix) and index.isdigit() and int(index) < self.shards:
                found[int(index)] = lease
                self._silent_for(lease)  # observed every round, so expiry is judged in time
        return found

    def _silent_for(self, lease: JSON) -> float:
        """How long (our clock) the Lease's record has not changed since we first saw it."""
        name = str(lease["metadata"]["name"])
        spec = _spec(lease)
        record = f"{spec.get('holderIdentity')}|{spec.get('renewTime')}"
        now = self._monotonic()
        seen = self._observed.get(name)
        if seen is None or seen[0] != record:
            self._observed[name] = (record, now)
            return 0.0
        return now - seen[1]

    def _free(self, lease: JSON | None) -> bool:
        holder = _holder(lease)
        if lease is None or not holder or holder == self.identity:
            return True
        return self._silent_for(lease) > _duration(lease, self.cfg)

    def _renew_or_drop(self, leases: dict[int, JSON]) -> None:
        for shard in sorted(self._held):
            lease = leases.get(shard)
            if lease is None or _holder(lease) != self.identity:
                self._drop(shard, f"now held by {_holder(lease) or 'nobody'}")
                continue
            if shard in self._draining and not self._busy(shard):
                self._release(shard, lease)
                continue
            self._write(shard, lease, acquire=False)

    def _give_back(self, target: int) -> None:
        with self._lock:
            kept = sorted(s for s in self._held if s not in self._draining)
        for shard in kept[target:]:
            with self._lock:
                self._draining.add(shard)  # no write from here on
            log.info("giving back a shard", shard=shard, target=target, identity=self.identity)
            if not self._busy(shard):
                self._release(shard, self._held[shard].lease)

    def _take(self, target: int, leases: dict[int, JSON]) -> None:
        wanted = target - len(self._held)
        # Each replica starts looking at its own place, so they seldom race for one shard.
        start = int(hashlib.sha256(self.identity.encode()).hexdigest()[:8], 16) % self.shards
        for step in range(self.shards):
            if wanted <= 0:
                return
            shard = (start + step) % self.shards
            if shard in self._held or not self._free(leases.get(shard)):
                continue
            if self._write(shard, leases.get(shard), acquire=True):
                wanted -= 1

    def _write(self, shard: int, lease: JSON | None, *, acquire: bool) -> bool:
        """Take or renew ``shard``'s Lease; whether this replica holds it afterwards."""
        name = shard_lease_name(self.cfg.lease_name, shard)
        now = _micro_time()
        spec = _spec(lease)
        transitions = int(spec.get("leaseTransitions") or 0)
        new_holder = _holder(lease) != self.identity
        spec.update(
            holderIdentity=self.identity,
            leaseDurationSeconds=int(self.cfg.lease_duration.total_seconds()),
            renewTime=now,
            leaseTransitions=transitions + (1 if new_holder and lease is not None else 0),
        )
        if new_holder:
            spec["acquireTime"] = now
        started = self._monotonic()  # before the write: no one may take over before this + duration
        try:
            if lease is None:
                written = self.kube.create_lease(
                    self.namespace, self._new_lease(name, SHARD_LABEL, spec)
                )
            else:
                written = self.kube.replace_lease(self.namespace, {**lease, "spec": spec})
        except StateConflict:
            if shard in self._held:
                self._drop(shard, "its Lease changed under us")
            return False
        except AutocanaryError as e:
            log.warning("shard Lease write failed", shard=shard, error=str(e))
            return False  # a held shard stays acted on until its renew deadline
        with self._lock:
            self._held[shard] = _Held(renewed_at=started, lease=written)
        if acquire:
            log.info("shard acquired", shard=shard, identity=self.identity)
        return True

    def _drop(self, shard: int, why: str) -> None:
        with self._lock:
            self._held.pop(shard, None)
            self._draining.discard(shard)
        log.warning("shard lost", shard=shard, why=why, identity=self.identity)

    def _release(self, shard: int, lease: JSON) -> None:
        """Hand ``shard`` back at once (holder cleared), after this replica stopped acting on it."""
        with self._lock:
            self._held.pop(shard, None)
            self._draining.discard(shard)
        spec = {
            **_spec(lease),
            "holderIdentity": "",
            "leaseDurationSeconds": 1,
            "renewTime": _micro_time(),
        }
        try:
            self.kube.replace_lease(self.namespace, {**lease, "spec": spec})
            log.info("shard released", shard=shard, identity=self.identity)
        except AutocanaryError as e:
            log.warning(
                "could not release a shard; it expires on its own", shard=shard, error=str(e)
            )

    def _tell(self) -> None:
        acting = self.acting()
        if acting != self._acting:
            self._acting = acting
            log.info("shards held", shards=acting, identity=self.identity, members=self.members)
            if self._on_change is not None:
                self._on_change(acting)

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Hold shards in a background thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._loop, name="shards", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        period = self.cfg.retry_period.total_seconds()
        while not self._stop.is_set():
            try:
                self.run_round()
            except Exception:
                # A bug must not end the thread silently: shards held would lapse unnoticed.
                log.exception("shard round crashed", identity=self.identity)
            self._stop.wait(period)

    def stop(self, release: bool = True) -> None:
        """Stop holding; with ``release``, hand every shard back and withdraw the presence Lease.

        Called once no tick runs any more (the daemon's scheduler has shut down).
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.cfg.retry_period.total_seconds() + 20)
        with self._lock:
            self._draining.update(self._held)
            held = {shard: h.lease for shard, h in self._held.items()}
        if release:
            for shard, lease in held.items():
                self._release(shard, lease)
            if self._member_lease is not None:
                self._delete_quietly(self._member_lease)
        with self._lock:
            self._held.clear()
            self._draining.clear()
        self._tell()


def _duration(lease: JSON, cfg: LeaderElectionConfig) -> float:
    return float(_spec(lease).get("leaseDurationSeconds") or cfg.lease_duration.total_seconds())
