"""The pure parts of sharding: which shard a rollout is in, how many shards each replica holds."""

from __future__ import annotations

from collections import Counter

import pytest

from autocanary.adapters.shards import (
    fair_shares,
    member_lease_name,
    shard_lease_name,
    shard_of,
)
from autocanary.config.loader import parse_config
from autocanary.errors import ConfigError

KEYS = [(f"team-{i % 37}", f"svc-{i}") for i in range(4000)]


def test_a_rollout_maps_to_the_same_shard_every_time_and_within_range() -> None:
    for namespace, name in KEYS[:200]:
        shard = shard_of(namespace, name, 16)
        assert 0 <= shard < 16
        assert shard_of(namespace, name, 16) == shard
    assert {shard_of(ns, n, 1) for ns, n in KEYS[:200]} == {0}


def test_namespace_and_name_both_count() -> None:
    # The same name in two namespaces is two rollouts; they need not share a shard.
    shards = {shard_of(f"team-{i}", "web", 16) for i in range(50)}
    assert len(shards) > 8


def test_rollouts_spread_evenly_over_the_shards() -> None:
    counts = Counter(shard_of(ns, n, 16) for ns, n in KEYS)
    assert set(counts) == set(range(16))
    expected = len(KEYS) / 16
    # 4000 keys over 16 shards: a fair hash stays well within 25% of 250 each.
    assert all(abs(c - expected) < 0.25 * expected for c in counts.values()), counts


def test_growing_the_shard_count_moves_only_what_the_new_shards_take() -> None:
    before = {key: shard_of(*key, 16) for key in KEYS}
    after = {key: shard_of(*key, 20) for key in KEYS}
    moved = [key for key in KEYS if before[key] != after[key]]
    # Jump hashing: a key either stays or moves to one of the new shards (16..19),
    # about 4/20 of them; modulo hashing would move about 80%.
    assert all(after[key] >= 16 for key in moved)
    assert 0.15 < len(moved) / len(KEYS) < 0.25


@pytest.mark.parametrize(
    ("members", "shards", "expected"),
    [
        (["a"], 16, {"a": 16}),
        (["b", "a"], 16, {"a": 8, "b": 8}),
        (["c", "a", "b"], 16, {"a": 6, "b": 5, "c": 5}),
        (["a", "b", "c", "d", "e"], 16, {"a": 4, "b": 3, "c": 3, "d": 3, "e": 3}),
        (["a", "b", "c"], 2, {"a": 1, "b": 1, "c": 0}),
        (["a", "a", "b"], 3, {"a": 2, "b": 1}),
        ([], 16, {}),
    ],
)
def test_fair_shares_add_up_to_every_shard(
    members: list[str], shards: int, expected: dict[str, int]
) -> None:
    shares = fair_shares(members, shards)
    assert shares == expected
    if members:
        assert sum(shares.values()) == shards
        assert max(shares.values()) - min(shares.values()) <= 1


def test_every_replica_computes_the_same_shares_whatever_order_it_lists_them_in() -> None:
    members = [f"autocanary-7d9f-{c}" for c in "qwertyuiop"]
    assert fair_shares(members, 16) == fair_shares(list(reversed(members)), 16)


def test_lease_names_are_valid_object_names() -> None:
    assert shard_lease_name("autocanary", 3) == "autocanary-shard-3"
    # Identities are pod names in-cluster, host-pid elsewhere; the Lease name never
    # carries them, so any identity makes a valid, fixed-length name.
    name = member_lease_name("autocanary", "Host_Name.with:odd/chars-123")
    assert name.startswith("autocanary-member-")
    assert len(name) == len("autocanary-member-") + 16
    assert name == member_lease_name("autocanary", "Host_Name.with:odd/chars-123")
    assert name != member_lease_name("autocanary", "other")


def test_shards_need_leader_election_on() -> None:
    text = (
        "prometheus: {url: http://prometheus:9090}\n"
        "daemon: {leaderElection: {enabled: false, shards: 4}}\n"
        "discovery: {enabled: true}\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    [problem] = caught.value.problems
    assert problem.path == "daemon.leaderElection"
    assert problem.message == (
        "shards: 4 needs enabled: true (a replica acts only on the shards whose Leases it holds)"
    )
