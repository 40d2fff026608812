"""A gateway rollout's HTTPRoute rule: reading its weights, and the rules that set them.

Pure functions over the HTTPRoute's JSON, so the decision and its unit tests
need no API server. The rule the config names lists the stable and canary
Services among its backendRefs; autocanary sets their weights to the
canary's percentage and the rest (they always add up to 100), and, with an
A/B match, adds one rule of its own after the others: the named rule's
matches, each with the tester's header (or cookie) added, and the canary's
backendRef alone. More header matches win over fewer at equal paths in the
Gateway API's precedence, so matching requests always reach the canary.
All of it is written as one list of rules in one guarded write.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from autocanary.config.models import ABMatch, GatewayConfig
from autocanary.rollout.revision import JSON

#: The Gateway API's default weight of a backendRef without one.
_DEFAULT_WEIGHT = 1


@dataclass(frozen=True)
class RouteView:
    """The named rule of a gateway rollout's HTTPRoute as read.

    ``problem`` says why autocanary cannot steer traffic through it (the
    route or the rule is gone, a Service is no longer a backend of it); the
    weights and ``ab`` are meaningful only without one.
    """

    problem: str | None = None
    stable_weight: int = 0
    canary_weight: int = 0
    ab: bool = False  # autocanary's A/B rule is there

    @property
    def canary_percent(self) -> float:
        """The canary's share of the rule's traffic in percent (0 when nothing has weight)."""
        total = self.stable_weight + self.canary_weight
        return 100.0 * self.canary_weight / total if total else 0.0


def describe(gateway: GatewayConfig, namespace: str) -> str:
    """The route and its rule in words, e.g. ``HTTPRoute demo/shop rule 0``."""
    return f"HTTPRoute {gateway.namespace or namespace}/{gateway.http_route} {gateway.rule_label}"


def _rules(route: JSON) -> list[JSON]:
    rules = (route.get("spec") or {}).get("rules") or []
    return [r for r in rules if isinstance(r, dict)] if isinstance(rules, list) else []


def _is_service(ref: JSON, name: str) -> bool:
    return (
        ref.get("name") == name
        and (ref.get("kind") or "Service") == "Service"
        and (ref.get("group") or "") == ""
    )


def _weight(ref: JSON) -> int:
    weight = ref.get("weight", _DEFAULT_WEIGHT)
    return weight if isinstance(weight, int) and not isinstance(weight, bool) else 0


def _match_header(match: ABMatch) -> JSON:
    if match.header is not None:
        return {"type": "Exact", "name": match.header.name, "value": match.header.value}
    assert match.cookie is not None
    # The Gateway API has no cookie match: the Cookie header, one name=value pair in it.
    name, value = re.escape(match.cookie.name), re.escape(match.cookie.value)
    return {
        "type": "RegularExpression",
        "name": "Cookie",
        "value": f"(^|.*;[ ]*){name}={value}(;.*|$)",
    }


def _is_ab_rule(rule: JSON, gateway: GatewayConfig) -> bool:
    """Whether ``rule`` is autocanary's A/B rule: the canary alone, every match with the header."""
    refs = rule.get("backendRefs") or []
    if len(refs) != 1 or not _is_service(refs[0], gateway.canary_service):
        return False
    matches = rule.get("matches") or []
    if gateway.match is None or not matches:
        return False
    wanted = _match_header(gateway.match)
    return all(wanted in (m.get("headers") or []) for m in matches if isinstance(m, dict))


def _find(rules: list[JSON], gateway: GatewayConfig) -> tuple[int | None, str | None]:
    """The index of the named rule in ``rules`` (autocanary's A/B rule not counted), or why not."""
    own = [i for i, rule in enumerate(rules) if not _is_ab_rule(rule, gateway)]
    if isinstance(gateway.rule, int):
        if gateway.rule >= len(own):
            return None, f"it has no rule {gateway.rule} (it has {len(own)})"
        return own[gateway.rule], None
    named = [i for i in own if rules[i].get("name") == gateway.rule]
    if not named:
        names = [rules[i].get("name") for i in own if rules[i].get("name")]
        return None, f"it has no rule named {gateway.rule!r} (named rules: {names or 'none'})"
    return named[0], None


def read(route: JSON | None, gateway: GatewayConfig, namespace: str) -> RouteView:
    """The named rule's weights (and the A/B rule) as read; a problem when they cannot be set."""
    where = f"HTTPRoute {gateway.namespace or namespace}/{gateway.http_route}"
    if route is None:
        return RouteView(problem=f"the {where} was not found")
    rules = _rules(route)
    index, why = _find(rules, gateway)
    if index is None:
        return RouteView(problem=f"the {where} cannot be used: {why}")
    refs = [r for r in rules[index].get("backendRefs") or [] if isinstance(r, dict)]
    weights: dict[str, int] = {}
    others = []
    for ref in refs:
        for service in (gateway.stable_service, gateway.canary_service):
            if _is_service(ref, service) and service not in weights:
                weights[service] = _weight(ref)
                break
        else:
            if _weight(ref) > 0:
                others.append(str(ref.get("name")))
    label = describe(gateway, namespace)
    missing = [s for s in (gateway.stable_service, gateway.canary_service) if s not in weights]
    if missing:
        return RouteView(
            problem=f"the {label} has no backendRef to Service {', '.join(missing)}: "
            "autocanary sets the weights of the stable and canary Services there"
        )
    if others:
        return RouteView(
            problem=f"the {label} also sends traffic to {', '.join(others)}: the stable and "
            "canary Services must be its only backends with a weight"
        )
    ab = any(_is_ab_rule(rule, gateway) for rule in rules)
    return RouteView(
        stable_weight=weights[gateway.stable_service],
        canary_weight=weights[gateway.canary_service],
        ab=ab,
    )


def _ab_rule(target: JSON, gateway: GatewayConfig) -> JSON:
    """autocanary's A/B rule: ``target``'s matches with the header added, the canary alone."""
    assert gateway.match is not None
    header = _match_header(gateway.match)
    matches = copy.deepcopy(target.get("matches")) or [
        {"path": {"type": "PathPrefix", "value": "/"}}
    ]
    for match in matches:
        match["headers"] = [*(match.get("headers") or []), header]
    canary = next(
        r for r in target.get("backendRefs") or [] if _is_service(r, gateway.canary_service)
    )
    rule: dict[str, Any] = {"matches": matches, "backendRefs": [{**canary, "weight": 1}]}
    if target.get("filters"):
        rule["filters"] = copy.deepcopy(target["filters"])
    return rule


def rules_with(route: JSON, gateway: GatewayConfig, canary_weight: int, ab: bool) -> list[JSON]:
    """The route's rules with the canary at ``canary_weight`` percent and the A/B rule or not.

    Everything else in the route is kept as read. ``route`` must have been
    :func:`read` without a problem.
    """
    if not 0 <= canary_weight <= 100:
        raise ValueError(f"a canary weight is a percentage from 0 to 100, got {canary_weight}")
    rules = [r for r in copy.deepcopy(_rules(route)) if not _is_ab_rule(r, gateway)]
    index, why = _find(rules, gateway)
    if index is None:
        raise ValueError(f"the {describe(gateway, '')} cannot be used: {why}")
    target = rules[index]
    set_ = {gateway.stable_service: 100 - canary_weight, gateway.canary_service: canary_weight}
    for ref in target.get("backendRefs") or []:
        for service, weight in set_.items():
            if _is_service(ref, service):
                ref["weight"] = weight
    if ab and gateway.match is not None:
        rules.append(_ab_rule(target, gateway))
    return rules
