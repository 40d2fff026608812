"""What the daemon checks at start-up (and on each reload): does it have what it will need?

A missing alert secret used to show at the first rollback, a forbidden verb at
the first promotion. Each requirement is checked once, up front, and every one
missing is said loudly (an error log line each) and exported as the gauge
``autocanary_requirement_missing{requirement, rollout, subject}``. Nothing is
refused: the healthy rollouts run as usual, and a rollout whose requirement is
missing fails its ticks with the same message.

- **alert secrets**: every sink's URL can be read (environment variable or
  file); the value is read, never shown.
- **Prometheus**: it answers a trivial query.
- **RBAC**: each verb the daemon uses (get and patch on both Deployments of
  each rollout and on a blue/green rollout's two Services, create configmaps
  and get and update its state's ConfigMap, list pods and create events in its
  namespace, the leader-election Lease). One SelfSubjectRulesReview per
  namespace lists what the daemon may do there, and whatever those rules grant
  is granted; only what they do not grant (or all, when the authorizers cannot
  list their rules) is asked with a SelfSubjectAccessReview, the authoritative
  answer, once per distinct permission. A thousand rollouts in a namespace so
  cost one review, not eight thousand. Both reviews are allowed to every
  authenticated user, so no extra permission is needed to ask.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from autocanary.adapters.kubernetes import Access, ResourceRule
from autocanary.config.models import Config
from autocanary.errors import AutocanaryError
from autocanary.rollout.state import state_object_name


@dataclass(frozen=True)
class Missing:
    """One requirement not met: what, for which rollout ('' for the daemon), and why."""

    requirement: str  # alertSecret, prometheus, rbac
    rollout: str
    subject: str
    message: str


class AccessReviewer(Protocol):
    """What the checks need from the Kubernetes adapter."""

    def can_i(self, access: Access) -> bool:
        """Whether this process may do ``access``."""
        ...

    def rules_in(self, namespace: str) -> list[ResourceRule] | None:
        """What this process may do in ``namespace``; None when not every rule is known."""
        ...


class Querier(Protocol):
    """What the checks need from the Prometheus adapter."""

    url: str

    def query_value(self, promql: str) -> float | None:
        """One number, or None."""
        ...


def needed_access(config: Config, lease_namespace: str | None) -> list[tuple[str, Access]]:
    """(rollout, permission) for everything the daemon does in the cluster."""
    needed: list[tuple[str, Access]] = []
    for rollout in config.rollouts:
        for name in (rollout.stable, rollout.canary_name):
            for verb in ("get", "patch"):
                needed.append(
                    (rollout.name, Access(verb, "deployments", "apps", rollout.namespace, name))
                )
        if rollout.blue_green is not None:
            # Blue/green reads and switches exactly its two Services.
            bg = rollout.blue_green
            for name in (bg.active_service, bg.preview_service):
                for verb in ("get", "patch"):
                    needed.append(
                        (rollout.name, Access(verb, "services", "", rollout.namespace, name))
                    )
        if rollout.gateway is not None:
            # A gateway rollout reads and writes exactly its HTTPRoute.
            gw = rollout.gateway
            for verb in ("get", "patch"):
                needed.append(
                    (
                        rollout.name,
                        Access(
                            verb,
                            "httproutes",
                            "gateway.networking.k8s.io",
                            gw.namespace or rollout.namespace,
                            gw.http_route,
                        ),
                    )
                )
        # The state's ConfigMap: created once (a create cannot be limited by name),
        # then read and replaced by name.
        needed.append((rollout.name, Access("create", "configmaps", "", rollout.namespace)))
        state = state_object_name(rollout.canary_name)
        for verb in ("get", "update"):
            needed.append((rollout.name, Access(verb, "configmaps", "", rollout.namespace, state)))
        needed.append((rollout.name, Access("list", "pods", "", rollout.namespace)))
        needed.append((rollout.name, Access("create", "events", "", rollout.namespace)))
    if config.discovery.enabled:
        # Declarations are read with a list per namespace served ("": every namespace).
        for namespace in config.discovery.namespaces or [""]:
            needed.append(("", Access("list", "deployments", "apps", namespace)))
    election = config.daemon.leader_election
    if election.enabled and lease_namespace is not None:
        group = "coordination.k8s.io"
        needed.append(("", Access("create", "leases", group, lease_namespace)))
        if election.shards == 1:
            for verb in ("get", "update"):
                needed.append(
                    ("", Access(verb, "leases", group, lease_namespace, election.lease_name))
                )
        else:
            # Shard and presence Leases are listed by label, renewed and taken over
            # (update), and a dead replica's presence Lease deleted: names vary, so
            # the permissions cannot be limited by name.
            for verb in ("get", "list", "update", "delete"):
                needed.append(("", Access(verb, "leases", group, lease_namespace)))
    return needed


def check(
    config: Config,
    kube: AccessReviewer,
    prometheus: Querier,
    *,
    lease_namespace: str | None,
) -> list[Missing]:
    """Every requirement of ``config`` that is not met now."""
    return [
        *_alert_secrets(config),
        *_prometheus(prometheus),
        *_rbac(needed_access(config, lease_namespace), kube),
    ]


def _alert_secrets(config: Config) -> Iterable[Missing]:
    used = {
        name
        for r in config.rollouts
        for name in (r.alerts or [s.name for s in config.alerts.sinks])
    }
    for sink in config.alerts.sinks:
        try:
            sink.url.resolve()
        except ValueError as e:
            routed = "" if sink.name in used else " (no rollout routes to it)"
            yield Missing(
                "alertSecret",
                "",
                sink.name,
                f"alert sink {sink.name!r} has no URL: {e}{routed}; its alerts will be dropped",
            )


def _prometheus(prometheus: Querier) -> Iterable[Missing]:
    try:
        prometheus.query_value("vector(1)")
    except AutocanaryError as e:
        yield Missing(
            "prometheus",
            "",
            prometheus.url,
            f"{e}; every analysis will be inconclusive until it answers",
        )


def _rbac(needed: list[tuple[str, Access]], kube: AccessReviewer) -> Iterable[Missing]:
    rules: dict[str, list[ResourceRule] | None] = {}
    answers: dict[Access, bool] = {}
    for rollout, access in needed:
        if access not in answers:
            try:
                answers[access] = _granted(access, rules, kube) or kube.can_i(access)
            except AutocanaryError as e:
                yield Missing("rbac", rollout, str(access), f"cannot check RBAC ({access}): {e}")
                return  # the API server is not answering: one line, not one per verb
        if not answers[access]:
            whose = f"rollout {rollout!r}" if rollout else "leader election"
            yield Missing(
                "rbac",
                rollout,
                str(access),
                f"forbidden: {access} (needed by {whose}); grant it in the daemon's Role "
                "(deploy/rbac.yaml)",
            )


def _granted(
    access: Access, rules: dict[str, list[ResourceRule] | None], kube: AccessReviewer
) -> bool:
    """Whether the namespace's listed rules (reviewed once, kept in ``rules``) allow ``access``.

    False means "not known to be allowed": a rule an authorizer could not list,
    or a failed review, is left to the SelfSubjectAccessReview. Every namespace
    (``""``) has no rules review of its own.
    """
    if not access.namespace:
        return False
    if access.namespace not in rules:
        try:
            rules[access.namespace] = kube.rules_in(access.namespace)
        except AutocanaryError:
            rules[access.namespace] = None  # the access review says why, if it fails too
    granted = rules[access.namespace]
    return granted is not None and any(rule.grants(access) for rule in granted)
