"""Loading a config file: YAML with line numbers, validation, every problem reported.

PyYAML composes the node tree (which knows lines) and constructs plain data;
pydantic validates the data; each pydantic error's location is then walked
back through the node tree to the line it came from. Problems between fields
(:func:`autocanary.config.models.cross_reference_problems`) are found in the same
pass.

Hostile input fails fast and small: the text's events are scanned first
(PyYAML's parser keeps its own stack) so deep nesting is refused before the
recursive composer sees it, and the node tree's size after expanding aliases
is counted without expanding it, so an alias bomb ("billion laughs") is
refused before anything is built from it.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from autocanary.config.models import (
    DECLARED_BY_THE_DEPLOYMENT,
    Config,
    RolloutConfig,
    cross_reference_problems,
    merged_settings,
)
from autocanary.config.redact import redact
from autocanary.errors import ConfigError, ConfigProblem

#: A ConfigMap holds at most 1 MiB; a config file is a few kilobytes.
MAX_BYTES = 1024 * 1024
#: Nesting levels; a real config has about 8.
MAX_DEPTH = 64
#: Values once aliases are expanded; a real config has a few hundred.
MAX_VALUES = 100_000


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys, with YAML 1.2 booleans.

    YAML 1.1 reads ``on``/``off``/``yes``/``no`` as booleans, which turned the
    sink key ``on:`` into ``True:``. Only true/false are booleans here; pydantic
    still accepts "yes"/"on" as a bool where a field is one.
    """


_BOOL_TAG = "tag:yaml.org,2002:bool"
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_UniqueKeyLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    result: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
    return result


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _line_of(root: yaml.Node | None, loc: Sequence[int | str]) -> tuple[int | None, str]:
    """Follow ``loc`` through the node tree to the deepest match: (1-based line, dotted path).

    Pydantic puts union-member tags and validator names into locations; those
    match no key and are skipped, so the path shows only real fields.
    """
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    path = ""
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for key_node, value_node in node.value:
                if key_node.value == part:
                    # An unknown key points at the key itself; anything else at its value.
                    line = key_node.start_mark.line + 1
                    node = value_node
                    path = f"{path}.{part}" if path else part
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            node = node.value[part]
            line = node.start_mark.line + 1
            path = f"{path}[{part}]"
    return line, path


def _known_keys(model: type[BaseModel], into: set[str], seen: set[type[BaseModel]]) -> set[str]:
    """Every key any config model accepts, to suggest the intended one for a typo."""
    seen.add(model)
    for name, field in model.model_fields.items():
        into.add(field.alias or name)
        for nested in _model_types(field.annotation):
            if nested not in seen:
                _known_keys(nested, into, seen)
    return into


def _model_types(annotation: Any) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        found.append(annotation)
    for arg in getattr(annotation, "__args__", ()):
        found.extend(_model_types(arg))
    for meta in getattr(annotation, "__metadata__", ()):
        found.extend(_model_types(meta))
    return found


_ALL_KEYS = sorted(_known_keys(Config, set(), set()))


def _message(error: Any) -> str:
    kind = error["type"]
    loc = error["loc"]
    if kind == "missing":
        # The path stops at the mapping that lacks the field, so name it here.
        return f"required field {loc[-1]!r} is missing" if loc else "required field is missing"
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else "?"
        close = difflib.get_close_matches(key, _ALL_KEYS, n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown field {key!r}{hint}"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if kind not in ("value_error", "assertion_error") and "input" in error:
        shown = _shown(error["input"])
        if shown is not None:
            message = f"{message} (got {shown})"
    return redact(message)


def _shown(value: object) -> str | None:
    """A short rendering of a scalar the user wrote; None for anything long or nested.

    Never serialises a container: after alias expansion it may be huge.
    """
    if not isinstance(value, str | int | float | bool) and value is not None:
        return None
    shown = json.dumps(value, default=str)
    return redact(shown) if len(shown) <= 80 else None


def _check_shape(text: str, source: str) -> None:
    """Refuse text nested deeper than :data:`MAX_DEPTH`, before the recursive composer runs."""
    depth = 0
    for event in yaml.parse(text, Loader=_UniqueKeyLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(
                    [
                        ConfigProblem(
                            source,
                            event.start_mark.line + 1 if event.start_mark else None,
                            "",
                            f"nested more than {MAX_DEPTH} levels deep; a config is about 8",
                        )
                    ]
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _expanded_size(root: yaml.Node, source: str) -> int:
    """How many values the tree holds once aliases are expanded, counted without expanding.

    An alias is the same node object as its anchor, so each node's size is
    computed once; a node that contains itself is refused.
    """
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in in_progress:
            raise ConfigError(
                [ConfigProblem(source, node.start_mark.line + 1, "", "an alias refers to itself")]
            )
        in_progress.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        in_progress.discard(key)
        sizes[key] = min(total, MAX_VALUES + 1)
        return sizes[key]

    return size(root)


def _parse_yaml(text: str, source: str) -> tuple[yaml.Node | None, object]:
    """The node tree (for lines) and the data of YAML ``text``, hostile input refused first."""
    try:
        _check_shape(text, source)
        root = yaml.compose(text, Loader=_UniqueKeyLoader)
        if root is not None and _expanded_size(root, source) > MAX_VALUES:
            raise ConfigError(
                [
                    ConfigProblem(
                        source,
                        None,
                        "",
                        f"expands to more than {MAX_VALUES} values through aliases (*name); "
                        "refused as an alias bomb",
                    )
                ]
            )
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 -- a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        what = _one_line(str(e.problem or e.context))
        raise ConfigError([ConfigProblem(source, line, "", f"invalid YAML: {what}")]) from e
    except yaml.YAMLError as e:
        raise ConfigError(
            [ConfigProblem(source, None, "", f"invalid YAML: {_one_line(str(e))}")]
        ) from e
    return root, data


def parse_declaration(
    text: str,
    source: str,
    *,
    namespace: str,
    deployment: str,
    defaults: dict[str, Any],
    sinks: Sequence[str],
) -> RolloutConfig:
    """A rollout declared on its stable Deployment: its annotation's settings over ``defaults``.

    ``text`` is the annotation's YAML (or JSON, which is YAML; empty means the
    defaults alone). The namespace and stable are the annotated Deployment's
    own, the name defaults to the Deployment's. Problems are reported as a
    config file's are (:class:`ConfigError`), lines counted in ``text``;
    ``sinks`` are the central config's alert sinks a declaration may route to.
    """
    if len(text) > MAX_BYTES:
        raise ConfigError([ConfigProblem(source, None, "", f"larger than {MAX_BYTES} bytes")])
    root, data = _parse_yaml(text, source) if text.strip() else (None, None)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            [
                ConfigProblem(
                    source,
                    1,
                    "",
                    "expected a mapping of rollout settings, e.g. "
                    "{analysis: {checks: [{name: errors, template: error-rate, max: 1%}]}}",
                )
            ]
        )
    values = {"namespace": namespace, "stable": deployment}
    own = [
        _located(
            source,
            root,
            (key,),
            f"'{key}' is the annotated Deployment's own ({values[key]}); remove it",
        )
        for key in DECLARED_BY_THE_DEPLOYMENT
        if key in data
    ]
    if own:
        raise ConfigError(own)
    merged = {**merged_settings(defaults, data), "namespace": namespace, "stable": deployment}
    merged.setdefault("name", deployment)
    wrapped = {"alerts": {"sinks": [{"name": name} for name in sinks]}, "rollouts": [merged]}
    cross = [
        (loc[2:], message)
        for loc, message in cross_reference_problems(wrapped)
        if tuple(loc[:2]) == ("rollouts", 0)
    ]
    try:
        rollout = RolloutConfig.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(_problems(source, root, e, cross)) from e
    if cross:
        raise ConfigError([_located(source, root, loc, message) for loc, message in cross])
    return rollout


def _problems(
    source: str,
    root: yaml.Node | None,
    error: ValidationError,
    cross: list[tuple[tuple[int | str, ...], str]],
) -> list[ConfigProblem]:
    """Every problem of a failed validation, located, each once, in line order."""
    problems = [_located(source, root, loc, message) for loc, message in cross]
    for each in error.errors():
        message = _message(each)
        # A model validator may find what the cross-reference pass found
        # (located more precisely, inside the validator's location): once.
        if not any(
            message == found and tuple(loc[: len(each["loc"])]) == tuple(each["loc"])
            for loc, found in cross
        ):
            problems.append(_located(source, root, each["loc"], message))
    problems.sort(key=lambda p: (p.line is None, p.line or 0))
    return problems


def parse_config(text: str, source: str = "<config>") -> Config:
    """Validate YAML text as a :class:`Config`; raise :class:`ConfigError` listing every problem."""
    if len(text) > MAX_BYTES:
        raise ConfigError(
            [ConfigProblem(source, None, "", f"larger than {MAX_BYTES} bytes, a ConfigMap's limit")]
        )
    root, data = _parse_yaml(text, source)
    if not isinstance(data, dict):
        raise ConfigError(
            [ConfigProblem(source, 1, "", "expected a mapping with 'prometheus' and 'rollouts'")]
        )
    cross = cross_reference_problems(data)
    try:
        config = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_problems(source, root, e, cross)) from e
    if cross:  # the models check the same; a difference is a bug, still reported located
        raise ConfigError([_located(source, root, loc, message) for loc, message in cross])
    return config


def _located(
    source: str, root: yaml.Node | None, loc: Sequence[int | str], message: str
) -> ConfigProblem:
    line, path = _line_of(root, loc)
    if root is None:
        # Nothing written to walk (a declaration left to its defaults): the path from loc,
        # without pydantic's union-member and validator tags.
        for part in loc:
            if isinstance(part, int):
                path += f"[{part}]"
            elif re.match(r"^[A-Za-z][A-Za-z0-9]*$", part):
                path = f"{path}.{part}" if path else part
    return ConfigProblem(source, line, path, _one_line(message))


def _one_line(text: str) -> str:
    """Each problem on its own line: messages that span lines are joined."""
    return " ".join(text.split())


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raise :class:`ConfigError` naming file, line and field."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([ConfigProblem(str(file), None, "", f"cannot read: {e.strerror}")]) from e
    except UnicodeDecodeError as e:
        raise ConfigError(
            [ConfigProblem(str(file), None, "", f"not UTF-8 text (byte {e.start}): {e.reason}")]
        ) from e
    return parse_config(text, str(file))


def locate(path: str | Path, loc: Sequence[int | str]) -> ConfigProblem:
    """A problem record pointing at ``loc`` in a config file (message left empty)."""
    text = Path(path).read_text(encoding="utf-8")
    line, dotted = _line_of(yaml.compose(text, Loader=_UniqueKeyLoader), loc)
    return ConfigProblem(str(path), line, dotted, "")
