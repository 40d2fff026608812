"""``autocanary.adapters.shards.ShardManager``: replicas sharing shard Leases on a real API server.

Three managers in this process, each with its own identity, play three
replicas. Rounds are run by hand and time is one injected monotonic clock
the test moves (lease 3s, renew deadline 2s), so taking over a dead
replica's shards is judged exactly as designed. After every round the
test checks the safety rule: no shard is acted on by two replicas, by each
replica's own reckoning (``may_act``), which is what guards its writes.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from kubernetes import client

from autocanary.adapters.kubernetes import KubeClient, fenced
from autocanary.adapters.shards import SHARD_LABEL, ShardManager, shard_lease_name
from autocanary.config.models import LeaderElectionConfig
from autocanary.errors import NotHolder

pytestmark = pytest.mark.integration

SHARDS = 6
CFG = LeaderElectionConfig.model_validate(
    {
        "leaseName": "autocanary",
        "leaseDuration": "3s",
        "renewDeadline": "2s",
        "retryPeriod": "0.5s",
        "shards": SHARDS,
    }
)


class Clock:
    """A monotonic clock the test moves by hand, shared by the replicas (real time is one)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def kube(kube_api: client.ApiClient) -> KubeClient:
    return KubeClient(kube_api, identity="itest-shards")


def manager(kube: KubeClient, namespace: str, identity: str, clock: Clock) -> ShardManager:
    return ShardManager(kube, CFG, namespace, identity, monotonic=clock)


def acting(managers: Iterable[ShardManager]) -> dict[str, list[int]]:
    return {m.identity: m.acting() for m in managers}


def assert_no_shard_twice(managers: Iterable[ShardManager]) -> None:
    owners: dict[int, list[str]] = {}
    for m in managers:
        for shard in m.acting():
            owners.setdefault(shard, []).append(m.identity)
    twice = {shard: who for shard, who in owners.items() if len(who) > 1}
    assert not twice, f"shards acted on by two replicas: {twice}"


def rounds(
    managers: list[ShardManager], clock: Clock, times: int, everyone: list[ShardManager]
) -> None:
    """``times`` rounds of each of ``managers``, 0.5s apart; the rule checked after each."""
    for _ in range(times):
        for m in managers:
            m.run_round()
            assert_no_shard_twice(everyone)
        clock.now += 0.5


def holders(kube: KubeClient, namespace: str) -> dict[int, str]:
    found = {}
    for lease in kube.list_leases(namespace, f"{SHARD_LABEL}=autocanary"):
        index = int(lease["metadata"]["name"].rsplit("-", 1)[1])
        found[index] = lease["spec"].get("holderIdentity") or ""
    return found


def test_replicas_join_share_fairly_and_take_over_a_dead_ones_shards(
    kube: KubeClient, namespace: str
) -> None:
    clock = Clock()
    a, b, c = (manager(kube, namespace, name, clock) for name in ("a", "b", "c"))
    everyone = [a, b, c]

    # One replica holds every shard (the one-replica default, in effect).
    rounds([a], clock, 2, everyone)
    assert a.acting() == list(range(SHARDS))
    assert holders(kube, namespace) == dict.fromkeys(range(SHARDS), "a")

    # A second joins: the first gives back the excess and the newcomer takes it.
    rounds([a, b], clock, 4, everyone)
    assert {k: len(v) for k, v in acting(everyone).items()} == {"a": 3, "b": 3, "c": 0}

    # A third joins: two each, every shard held.
    rounds([a, b, c], clock, 4, everyone)
    shares = acting(everyone)
    assert {k: len(v) for k, v in shares.items()} == {"a": 2, "b": 2, "c": 2}
    assert sorted(s for v in shares.values() for s in v) == list(range(SHARDS))
    assert {s: who for who, v in shares.items() for s in v} == holders(kube, namespace)

    # c stops (paused or partitioned: no release). It stops acting at its renew
    # deadline, before a and b may take its shards at the lease duration.
    c_shards = c.acting()
    taken_at = None
    for step in range(20):
        rounds([a, b], clock, 1, everyone)
        if taken_at is None and any(holders(kube, namespace)[s] != "c" for s in c_shards):
            taken_at = step
            assert c.acting() == [], "c still acts on shards that were taken over"
    assert taken_at is not None
    shares = acting(everyone)
    assert {k: len(v) for k, v in shares.items()} == {"a": 3, "b": 3, "c": 0}
    assert sorted(s for v in shares.values() for s in v) == list(range(SHARDS))
    assert set(a.members) == {"a", "b"}

    # c's write fence refuses a write on one of its former shards: nothing is sent.
    with fenced(c.fence(c_shards[0])), pytest.raises(NotHolder):
        kube.create_lease(
            namespace,
            {"metadata": {"name": "never-written"}, "spec": {"holderIdentity": "c"}},
        )
    assert kube.read_lease(namespace, "never-written") is None


def test_a_replica_leaving_gracefully_hands_its_shards_over_at_once(
    kube: KubeClient, namespace: str
) -> None:
    clock = Clock()
    a, b = manager(kube, namespace, "a", clock), manager(kube, namespace, "b", clock)
    rounds([a, b], clock, 6, [a, b])
    assert len(a.acting()) == len(b.acting()) == 3

    b.stop(release=True)
    assert b.acting() == []
    for lease in kube.list_leases(namespace, f"{SHARD_LABEL}=autocanary"):
        assert lease["spec"].get("holderIdentity") != "b"
    # b's presence Lease is gone, so a counts one replica and takes every shard
    # in its next round, without waiting for anything to expire.
    a.run_round()
    assert a.members == ["a"]
    assert a.acting() == list(range(SHARDS))
    assert holders(kube, namespace) == dict.fromkeys(range(SHARDS), "a")
    assert kube.read_lease(namespace, shard_lease_name("autocanary", 0)) is not None
