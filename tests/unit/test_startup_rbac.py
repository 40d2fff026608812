"""The start-up RBAC checks: one rules review per namespace, access reviews only for the rest.

The reviewer below answers from RBAC-shaped rules, as the API server's RBAC
authorizer would; the real API server's answers are in
tests/integration/test_startup_checks.py.
"""

from __future__ import annotations

from collections import Counter

from autocanary.adapters.kubernetes import Access, ResourceRule
from autocanary.config.loader import parse_config
from autocanary.config.models import Config
from autocanary.daemon import startup
from autocanary.errors import KubernetesUnavailable

ANALYSIS = "analysis: {sequential: {}}"


def _config(rollouts: int, namespaces: int = 1) -> Config:
    entries = "".join(
        f"  - {{name: app{i}, namespace: ns{i % namespaces}, stable: app{i}, {ANALYSIS}}}\n"
        for i in range(rollouts)
    )
    return parse_config(
        "prometheus: {url: 'http://127.0.0.1:9'}\n"
        "daemon:\n  leaderElection: {leaseName: autocanary, namespace: ops}\n"
        f"rollouts:\n{entries}"
    )


def _rule(verbs: str, group: str, resource: str, names: str = "") -> ResourceRule:
    return ResourceRule(
        verbs=frozenset(verbs.split()),
        api_groups=frozenset({group}),
        resources=frozenset({resource}),
        resource_names=frozenset(names.split()),
    )


class Reviewer:
    """Answers both reviews from per-namespace rules, counting what it is asked."""

    def __init__(self, rules: dict[str, list[ResourceRule]], *, incomplete: bool = False) -> None:
        self.rules = rules
        self.incomplete = incomplete
        self.calls: Counter[str] = Counter()
        self.asked: list[Access] = []
        self.down = False

    def rules_in(self, namespace: str) -> list[ResourceRule] | None:
        self.calls["rules"] += 1
        if self.down:
            raise KubernetesUnavailable("connection refused")
        return None if self.incomplete else self.rules.get(namespace, [])

    def can_i(self, access: Access) -> bool:
        self.calls["access"] += 1
        self.asked.append(access)
        if self.down:
            raise KubernetesUnavailable("connection refused")
        return any(rule.grants(access) for rule in self.rules.get(access.namespace, []))


LEASES = [_rule("create get update", "coordination.k8s.io", "leases")]


def _namespace_wide() -> list[ResourceRule]:
    return [
        _rule("get patch list watch", "apps", "deployments"),
        _rule("create get update", "", "configmaps"),
        _rule("list watch", "", "pods"),
        _rule("create", "", "events"),
    ]


def _missing(config: Config, reviewer: Reviewer) -> list[startup.Missing]:
    return list(startup._rbac(startup.needed_access(config, "ops"), reviewer))


def test_a_thousand_rollouts_cost_one_rules_review_per_namespace() -> None:
    config = _config(1000, namespaces=2)
    reviewer = Reviewer({"ns0": _namespace_wide(), "ns1": _namespace_wide(), "ops": LEASES})

    assert _missing(config, reviewer) == []
    assert reviewer.calls == {"rules": 3}  # ns0, ns1 and the Lease's namespace


def test_rules_limited_by_name_still_grant_without_access_reviews() -> None:
    # deploy/rbac.yaml's shape: get and patch on exactly the named Deployments and state.
    names = " ".join(f"app{i} app{i}-canary" for i in range(50))
    states = " ".join(f"app{i}-canary.autocanary-state" for i in range(50))
    rules = [
        _rule("get patch", "apps", "deployments", names),
        _rule("create", "", "configmaps"),
        _rule("get update", "", "configmaps", states),
        _rule("list", "", "pods"),
        _rule("create", "", "events"),
    ]
    reviewer = Reviewer({"ns0": rules, "ops": LEASES})

    assert _missing(_config(50), reviewer) == []
    assert reviewer.calls == {"rules": 2}


def test_what_the_rules_do_not_grant_is_asked_once_and_named_for_each_rollout() -> None:
    # ns1 forbids events: the access review confirms it once, and each of its
    # rollouts says so; ns0's rollouts are not named.
    forbidding = [r for r in _namespace_wide() if "events" not in r.resources]
    reviewer = Reviewer({"ns0": _namespace_wide(), "ns1": forbidding, "ops": LEASES})

    missing = _missing(_config(6, namespaces=2), reviewer)

    assert [(m.rollout, m.subject) for m in missing] == [
        ("app1", "create events ns1"),
        ("app3", "create events ns1"),
        ("app5", "create events ns1"),
    ]
    assert missing[0].message == (
        "forbidden: create events ns1 (needed by rollout 'app1'); "
        "grant it in the daemon's Role (deploy/rbac.yaml)"
    )
    assert reviewer.asked == [Access("create", "events", "", "ns1")]


def test_incomplete_rules_fall_back_to_an_access_review_per_permission() -> None:
    reviewer = Reviewer({"ns0": _namespace_wide(), "ops": LEASES}, incomplete=True)

    assert _missing(_config(3), reviewer) == []
    # Per rollout: get and patch on two Deployments, get and update its state;
    # create configmaps, list pods, create events once for the namespace; three Lease verbs.
    assert reviewer.calls == {"rules": 2, "access": 3 * 6 + 3 + 3}


def test_an_unreachable_api_server_is_said_once() -> None:
    reviewer = Reviewer({})
    reviewer.down = True

    missing = _missing(_config(5), reviewer)

    assert len(missing) == 1
    assert missing[0].message.startswith(
        "cannot check RBAC (get deployments.apps ns0/app0): connection refused"
    )


def test_rule_matching_follows_rbac() -> None:
    named = _rule("get", "apps", "deployments", "web")
    assert named.grants(Access("get", "deployments", "apps", "ns", "web"))
    assert not named.grants(Access("get", "deployments", "apps", "ns", "api"))
    assert not named.grants(Access("get", "deployments", "apps", "ns"))  # a list-like check
    assert not named.grants(Access("patch", "deployments", "apps", "ns", "web"))
    assert not named.grants(Access("get", "deployments", "", "ns", "web"))
    everything = ResourceRule(frozenset("*"), frozenset("*"), frozenset("*"))
    assert everything.grants(Access("update", "leases", "coordination.k8s.io", "ops", "x"))
    parsed = ResourceRule.from_json(
        {"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"]}
    )
    assert parsed == _rule("get", "", "configmaps", "a")
