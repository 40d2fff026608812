"""``autocanary.adapters.leader.LeaderElector``: two replicas contending for a real Lease.

Short durations (lease 3s, renew deadline 2s, retry 0.5s). Where the rule is
about time, each elector gets its own injected monotonic clock that the test
moves, so expiry is judged exactly as designed: on the observer's clock, never
on the wall-clock ``renewTime`` another replica wrote.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes import client

from autocanary.adapters.kubernetes import KubeClient, load_api_client
from autocanary.adapters.leader import LeaderElector
from autocanary.config.models import LeaderElectionConfig
from autocanary_testbed.controlplane import ControlPlane
from autocanary_testbed.procs import free_port
from autocanary_testbed.waiting import wait_until

pytestmark = pytest.mark.integration

CFG = LeaderElectionConfig.model_validate(
    {"leaseName": "autocanary", "leaseDuration": "3s", "renewDeadline": "2s", "retryPeriod": "0.5s"}
)
WAIT_S = 60.0  # a bound for a hang, not a timing expectation


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def kube(kube_api: client.ApiClient) -> KubeClient:
    return KubeClient(kube_api, identity="itest-leader")


@pytest.fixture
def unreachable(control_plane: ControlPlane) -> Iterator[KubeClient]:
    """A KubeClient whose API server address has nothing listening."""
    api = load_api_client(str(control_plane.kubeconfig_path))
    api.configuration.host = f"https://127.0.0.1:{free_port()}"
    try:
        yield KubeClient(api)
    finally:
        api.close()  # type: ignore[no-untyped-call]


def elector(
    kube: KubeClient, namespace: str, identity: str, clock: Clock | None = None, **kw: Any
) -> LeaderElector:
    if clock is None:
        return LeaderElector(kube, CFG, namespace, identity, **kw)
    return LeaderElector(kube, CFG, namespace, identity, monotonic=clock, **kw)


def holder(kube: KubeClient, namespace: str) -> str:
    lease = kube.read_lease(namespace, CFG.lease_name)
    assert lease is not None
    return str(lease["spec"].get("holderIdentity") or "")


def lease_spec(kube: KubeClient, namespace: str) -> dict[str, Any]:
    lease = kube.read_lease(namespace, CFG.lease_name)
    assert lease is not None
    spec: dict[str, Any] = lease["spec"]
    return spec


# ---- who leads -------------------------------------------------------------------------------


def test_the_first_acquires_and_the_second_does_not(kube: KubeClient, namespace: str) -> None:
    a = elector(kube, namespace, "a", Clock())
    b = elector(kube, namespace, "b", Clock())

    assert a.try_acquire_or_renew() is True
    assert b.try_acquire_or_renew() is False

    assert a.is_leader()
    assert not b.is_leader()
    spec = lease_spec(kube, namespace)
    assert spec["holderIdentity"] == "a"
    assert spec["leaseDurationSeconds"] == 3
    assert spec["leaseTransitions"] == 0
    assert spec["acquireTime"]
    assert spec["renewTime"]
    assert a.last_contact is not None


def test_exactly_one_leader_while_both_keep_trying(kube: KubeClient, namespace: str) -> None:
    clock_a, clock_b = Clock(), Clock()
    a = elector(kube, namespace, "a", clock_a)
    b = elector(kube, namespace, "b", clock_b)
    renew_times = set()

    for round_ in range(12):
        first, second = (a, b) if round_ % 2 == 0 else (b, a)
        results = {first.identity: first.try_acquire_or_renew()}
        results[second.identity] = second.try_acquire_or_renew()
        leaders = [e.identity for e in (a, b) if e.is_leader()]
        assert leaders == ["a"], f"round {round_}: {results}"
        assert results == {"a": True, "b": False}
        assert holder(kube, namespace) == "a"
        renew_times.add(lease_spec(kube, namespace)["renewTime"])
        # Time passes on both clocks, but the leader renews every round: never expired.
        clock_a.advance(1.0)
        clock_b.advance(1.0)

    assert len(renew_times) == 12  # a renewed on every round
    assert lease_spec(kube, namespace)["leaseTransitions"] == 0


def test_exactly_one_leader_with_both_electing_in_background(
    kube: KubeClient, namespace: str
) -> None:
    a = elector(kube, namespace, "a")
    b = elector(kube, namespace, "b")
    both: list[float] = []
    samples = 0
    a.start()
    b.start()
    try:
        wait_until(lambda: a.is_leader() or b.is_leader(), timeout=WAIT_S, what="a leader")
        deadline = time.monotonic() + 4  # a few renewals of each; not a timing expectation
        while time.monotonic() < deadline:
            leading = [e.is_leader() for e in (a, b)]
            if all(leading):
                both.append(time.monotonic())
            samples += 1
            time.sleep(0.02)
        leader = a if a.is_leader() else b
        assert holder(kube, namespace) == leader.identity
    finally:
        a.stop()
        b.stop()
    assert samples > 10
    assert both == []
    assert holder(kube, namespace) == ""  # the leader released the lease on stop


# ---- expiry on the observer's own clock ------------------------------------------------------


def test_a_silent_leader_is_replaced_only_after_the_lease_duration_on_the_observers_clock(
    kube: KubeClient, namespace: str
) -> None:
    clock_a, clock_b = Clock(), Clock()
    a = elector(kube, namespace, "a", clock_a)
    b = elector(kube, namespace, "b", clock_b)
    assert a.try_acquire_or_renew()
    # From here on a stops renewing (a hung or partitioned replica).

    assert b.try_acquire_or_renew() is False  # b first sees a's record now
    clock_b.advance(2.9)
    assert b.try_acquire_or_renew() is False
    clock_b.advance(0.2)  # 3.1s of b's own time with the record unchanged

    assert b.try_acquire_or_renew() is True
    assert b.is_leader()
    spec = lease_spec(kube, namespace)
    assert spec["holderIdentity"] == "b"
    assert spec["leaseTransitions"] == 1
    # a's own clock says it has not renewed within the renew deadline: it stopped acting.
    clock_a.advance(2.1)
    assert not a.is_leader()
    assert a.try_acquire_or_renew() is False
    assert not a.is_leader()


def test_each_renewal_restarts_the_observers_count(kube: KubeClient, namespace: str) -> None:
    clock_a, clock_b = Clock(), Clock()
    a = elector(kube, namespace, "a", clock_a)
    b = elector(kube, namespace, "b", clock_b)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()

    clock_b.advance(2.5)
    assert a.try_acquire_or_renew()  # a renews: a new record
    clock_b.advance(1.0)  # 3.5s since b first looked, but only now does b see the renewal
    assert not b.try_acquire_or_renew()
    clock_b.advance(2.9)
    assert not b.try_acquire_or_renew()
    clock_b.advance(0.2)
    assert b.try_acquire_or_renew()
    assert holder(kube, namespace) == "b"


@pytest.mark.parametrize("skew", [timedelta(hours=-1), timedelta(hours=1)])
def test_expiry_ignores_the_wall_clock_in_the_lease(
    kube: KubeClient, namespace: str, skew: timedelta
) -> None:
    # Another replica, its wall clock an hour off, holds the lease.
    renew = (datetime.now(UTC) + skew).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    kube.create_lease(
        namespace,
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": CFG.lease_name, "namespace": namespace},
            "spec": {
                "holderIdentity": "skewed",
                "leaseDurationSeconds": 3,
                "acquireTime": renew,
                "renewTime": renew,
                "leaseTransitions": 4,
            },
        },
    )
    clock_b = Clock()
    b = elector(kube, namespace, "b", clock_b)

    assert b.try_acquire_or_renew() is False  # an hour "ago" or not: b has not waited yet
    clock_b.advance(2.9)
    assert b.try_acquire_or_renew() is False
    clock_b.advance(0.2)
    assert b.try_acquire_or_renew() is True
    spec = lease_spec(kube, namespace)
    assert spec["holderIdentity"] == "b"
    assert spec["leaseTransitions"] == 5


def test_a_stopped_leader_is_replaced_in_real_time_after_the_lease_duration(
    kube: KubeClient, namespace: str
) -> None:
    changes: list[tuple[str, bool, float]] = []
    lock = threading.Lock()

    def recorder(name: str) -> Any:
        def on_change(leading: bool) -> None:
            with lock:
                changes.append((name, leading, time.monotonic()))

        return on_change

    a = elector(kube, namespace, "a", on_change=recorder("a"))
    b = elector(kube, namespace, "b", on_change=recorder("b"))
    assert a.try_acquire_or_renew()
    a.start()
    b.start()
    try:
        wait_until(lambda: holder(kube, namespace) == "a", timeout=WAIT_S, what="a holding")
        a.stop(release=False)  # stops renewing and keeps its name on the lease
        last_renew = a._renewed_at
        assert last_renew is not None
        assert not a.is_leader()
        wait_until(b.is_leader, timeout=WAIT_S, what="b taking over")
    finally:
        a.stop(release=False)
        b.stop()

    took_over = next(at for name, leading, at in changes if name == "b" and leading)
    # b waits a whole lease duration after a's last renewal (less at most one retry period
    # for when b saw it): never earlier.
    assert took_over - last_renew >= CFG.lease_duration.total_seconds() - 0.5
    assert changes[0][:2] == ("a", True)
    assert ("a", False) in [c[:2] for c in changes]


# ---- release, and losing the API -------------------------------------------------------------


def test_release_lets_the_other_take_over_at_once(kube: KubeClient, namespace: str) -> None:
    clock_a, clock_b = Clock(), Clock()
    a = elector(kube, namespace, "a", clock_a)
    b = elector(kube, namespace, "b", clock_b)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()

    a.release()

    assert not a.is_leader()  # the one that handed the lease back stops acting at once
    assert holder(kube, namespace) == ""
    assert b.try_acquire_or_renew() is True  # no waiting: b's clock did not move
    assert b.is_leader()
    assert holder(kube, namespace) == "b"
    assert lease_spec(kube, namespace)["leaseTransitions"] == 1


def test_stop_releases_only_when_leading(kube: KubeClient, namespace: str) -> None:
    a = elector(kube, namespace, "a", Clock())
    b = elector(kube, namespace, "b", Clock())
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()

    b.stop()  # not leading: must not touch a's lease
    assert holder(kube, namespace) == "a"

    a.stop()
    assert not a.is_leader()
    assert holder(kube, namespace) == ""


def test_a_restarted_replica_with_the_same_identity_renews_its_own_lease(
    kube: KubeClient, namespace: str
) -> None:
    before = elector(kube, namespace, "pod-0", Clock())
    assert before.try_acquire_or_renew()
    acquired = lease_spec(kube, namespace)["acquireTime"]

    after = elector(kube, namespace, "pod-0", Clock())  # the same pod name after a restart
    assert after.try_acquire_or_renew() is True
    spec = lease_spec(kube, namespace)
    assert spec["acquireTime"] == acquired  # a renewal, not a new acquisition
    assert spec["leaseTransitions"] == 0


def test_a_leader_that_cannot_reach_the_api_stops_leading_after_the_renew_deadline(
    kube: KubeClient, unreachable: KubeClient, namespace: str
) -> None:
    clock = Clock()
    changes: list[bool] = []
    a = elector(kube, namespace, "a", clock, on_change=changes.append)
    assert a.try_acquire_or_renew()
    contact = a.last_contact
    a.kube = unreachable  # the API server is gone from here on

    clock.advance(1.0)
    assert a.try_acquire_or_renew() is True  # within the renew deadline: still leading
    assert a.is_leader()
    clock.advance(1.1)  # 2.1s since the last successful renewal
    assert a.try_acquire_or_renew() is False
    assert not a.is_leader()
    assert a.last_contact == contact  # no answer since
    assert changes == [True, False]  # told, so the leader gauge does not keep saying 1

    a.kube = kube  # the API is back and nobody else took the lease: a renews and leads again
    assert a.try_acquire_or_renew() is True
    assert a.is_leader()
    assert holder(kube, namespace) == "a"
    assert changes == [True, False, True]
