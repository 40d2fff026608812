"""``--set [VARIANT:]PATH=VALUE``: config variants to compare, validated like the config itself.

``PATH`` is a dotted path inside the rollout's entry, with camelCase keys as in
the YAML (snake_case works too); a list element is addressed by its ``name``
(checks) or by its index (steps)::

    --set analysis.checks.error-rate.max=2%
    --set analysis.failureLimit=0
    --set loose:steps.0.hold=5m

``VALUE`` is read as YAML (``0.02``, ``2%``, ``500ms``, ``true``, ``null`` to
unset a field, ``{tolerance: 20%}``). Overrides without a ``VARIANT:`` prefix
form the variant ``custom``; the rollout as configured is always the variant
``config``. The changed rollout is validated by the same config models, in the
whole config, so a bad value fails as it would in the file.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from autocanary.backtest.errors import OverrideError
from autocanary.backtest.report import Variant
from autocanary.config.models import Config, RolloutConfig

BASELINE = "config"
UNNAMED = "custom"
_SPEC = re.compile(
    r"^(?:(?P<variant>[A-Za-z0-9][-A-Za-z0-9_.]*):)?(?P<path>[^=:\s]+)=(?P<value>.*)$"
)


@dataclass(frozen=True)
class Override:
    """One ``PATH=VALUE``: the path's parts and the value read as YAML."""

    variant: str
    path: tuple[str, ...]
    value: Any
    text: str  # PATH=VALUE as given, without the variant prefix


def parse_override(text: str) -> Override:
    """Read ``[VARIANT:]PATH=VALUE``; :class:`OverrideError` saying the expected form."""
    match = _SPEC.match(text.strip())
    if match is None:
        raise OverrideError(
            f"--set {text!r}: expected [VARIANT:]PATH=VALUE, "
            "e.g. analysis.checks.error-rate.max=2% or loose:analysis.failureLimit=2"
        )
    path = tuple(match.group("path").split("."))
    if any(not part for part in path):
        raise OverrideError(f"--set {text!r}: empty part in the path {match.group('path')!r}")
    raw = match.group("value")
    if not raw.strip():
        raise OverrideError(f"--set {text!r}: no value after '='; use null to unset a field")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise OverrideError(f"--set {text!r}: the value is not valid YAML: {e}") from e
    variant = match.group("variant") or UNNAMED
    return Override(variant, path, value, f"{match.group('path')}={raw}")


def variants(specs: Sequence[str]) -> list[tuple[Variant, list[Override]]]:
    """The baseline plus one variant per distinct ``VARIANT:`` prefix, in first-seen order."""
    grouped: dict[str, list[Override]] = {BASELINE: []}
    for spec in specs:
        override = parse_override(spec)
        if override.variant == BASELINE:
            raise OverrideError(
                f"--set {spec!r}: {BASELINE!r} names the rollout as configured; "
                "pick another variant name"
            )
        grouped.setdefault(override.variant, []).append(override)
    return [
        (Variant(name, tuple(o.text for o in overrides)), overrides)
        for name, overrides in grouped.items()
    ]


def _key(node: dict[str, Any], part: str, where: str) -> str:
    for key in (part, to_camel(part)):
        if key in node:
            return key
    close = difflib.get_close_matches(part, list(node), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise OverrideError(
        f"unknown field {part!r} in {where or 'the rollout'}{hint}; known: {', '.join(node)}"
    )


def _index(node: list[Any], part: str, where: str) -> int:
    names = [item.get("name") for item in node if isinstance(item, dict)]
    if part in names:
        return names.index(part)
    if part.isdigit() and int(part) < len(node):
        return int(part)
    known = ", ".join(str(n) for n in names if n) or f"indexes 0-{len(node) - 1}"
    raise OverrideError(f"no element {part!r} in {where}; known: {known}")


def _set(data: dict[str, Any], override: Override) -> None:
    node: Any = data
    where = ""
    for i, part in enumerate(override.path):
        last = i == len(override.path) - 1
        if isinstance(node, dict):
            key: str | int = _key(node, part, where)
        elif isinstance(node, list):
            key = _index(node, part, where)
        else:
            raise OverrideError(f"{where} is a value ({node!r}), it has no field {part!r}")
        if last:
            node[key] = override.value
        else:
            node = node[key]
            where = f"{where}.{part}" if where else part


def _where(loc: Sequence[int | str], data: dict[str, Any]) -> str:
    """A validation error's location as an override path: list indexes become names."""
    parts: list[str] = []
    node: Any = data
    for part in loc:
        if isinstance(node, list) and isinstance(part, int) and part < len(node):
            item = node[part]
            name = item.get("name") if isinstance(item, dict) else None
            parts.append(str(name) if name else str(part))
            node = item
        elif isinstance(node, dict) and isinstance(part, str) and part in node:
            parts.append(part)
            node = node[part]
        elif isinstance(part, str) and part[:1].islower():
            parts.append(part)  # a missing or extra field; union tags are skipped
    return ".".join(parts)


def apply(config: Config, rollout: RolloutConfig, overrides: Sequence[Override]) -> RolloutConfig:
    """``rollout`` with ``overrides`` applied, validated in ``config``; :class:`OverrideError`."""
    if not overrides:
        return rollout
    data = config.model_dump(mode="json", by_alias=True)
    index = next(i for i, r in enumerate(config.rollouts) if r.name == rollout.name)
    entry = data["rollouts"][index]
    for override in overrides:
        try:
            _set(entry, override)
        except OverrideError as e:
            raise OverrideError(f"--set {override.text}: {e}") from None
    try:
        changed = Config.model_validate(data)
    except ValidationError as e:
        given = " ".join(f"--set {o.text}" for o in overrides)
        problems = []
        for error in e.errors():
            loc = error["loc"]
            inside = loc[2:] if loc[:2] == ("rollouts", index) else loc
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{_where(inside, entry) or 'rollout'}: {message}")
        raise OverrideError(
            f"variant {overrides[0].variant!r} ({given}) is not a valid rollout: "
            + "; ".join(problems)
        ) from e
    return changed.rollouts[index]
