"""PromQL templates: the built-in queries and ``{{ variable }}`` substitution.

Templates are plain strings with ``{{ name }}`` placeholders. Values that land
inside label matchers are escaped, so a version like ``v1"2`` cannot break
out of its quotes. Built-in templates cover the metrics of autocanary's own
probe and test app, so a minimal config needs no PromQL at all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

TemplateName = Literal["error-rate", "latency", "request-rate"]
Source = Literal["probe", "testpage"]

#: Variables a query template may use, with what each holds.
VARIABLES: Mapping[str, str] = {
    "namespace": "the rollout's namespace",
    "rollout": "the rollout's name",
    "stable": "the stable Deployment's name",
    "canary": "the canary Deployment's name",
    "version": "the version being measured (canary, or stable for the relative comparison)",
    "canary_version": "the canary's version",
    "stable_version": "the stable's version",
    "interval": "the analysis interval as a PromQL duration, e.g. 30s",
    "window": "how far back this analysis looks, as a PromQL duration (analysis.window, "
    "at least the time since the previous analysis); use it in range selectors: [{{ window }}]",
    "quantile": "the check's quantile (latency checks)",
    "selector": "the traffic source's label matchers (see analysis.selector)",
}

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")

#: Default label matchers per traffic source: the probe labels its series by
#: target (one target per rollout, named after it); the test app's series get
#: the namespace label from the scrape configuration.
DEFAULT_SELECTORS: Mapping[Source, str] = {
    "probe": 'target="{{ rollout }}"',
    "testpage": 'namespace="{{ namespace }}"',
}

_METRICS: Mapping[Source, tuple[str, str, str]] = {
    # requests counter (with any matcher it needs), duration histogram, error codes.
    # testpage counts /healthz and /metrics too; only "/" is the application's traffic.
    "probe": ("probe_requests_total", "probe_request_duration_seconds", "5..|error"),
    "testpage": ('testpage_requests_total{path="/", ', "testpage_request_duration_seconds", "5.."),
}


def _requests(source: Source, matchers: str) -> str:
    """The requests counter with ``matchers``, merged with the source's own ones."""
    metric = _METRICS[source][0]
    if metric.endswith(", "):
        return f"{metric}{matchers}}}"
    return f"{metric}{{{matchers}}}"


def variables_in(template: str) -> set[str]:
    """Return the placeholder names a template uses."""
    return set(_PLACEHOLDER.findall(template))


def unknown_variables(template: str) -> set[str]:
    """Return placeholder names that are not in :data:`VARIABLES`."""
    return variables_in(template) - set(VARIABLES)


_CLOSING = {")": "(", "]": "[", "}": "{"}


def syntax_problem(template: str) -> str | None:
    """What makes ``template`` unusable as PromQL before any Prometheus sees it, or None.

    Only what is certain without a parser: an empty query, unbalanced
    brackets or an unterminated string (placeholders count as values).
    ``validate --check-queries`` asks a real Prometheus for the rest.
    """
    text = _PLACEHOLDER.sub("0", template)
    if not text.strip():
        return "the query is empty"
    open_: list[tuple[str, int]] = []
    quote: str | None = None
    start = i = 0
    while i < len(text):
        char = text[i]
        if quote is not None:
            if char == "\\" and quote != "`":
                i += 1
            elif char == quote:
                quote = None
        elif char in "\"'`":
            quote = char
            start = i
        elif char == "#":
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        elif char in "([{":
            open_.append((char, i))
        elif char in _CLOSING:
            if not open_ or open_[-1][0] != _CLOSING[char]:
                return f"unbalanced {char!r} at character {i + 1} of the query"
            open_.pop()
        i += 1
    if quote is not None:
        return f"unterminated string starting at character {start + 1} of the query"
    if open_:
        char, at = open_[-1]
        return f"unclosed {char!r} at character {at + 1} of the query"
    return None


def escape_label_value(value: str) -> str:
    """Escape a value for use inside a double-quoted PromQL label matcher."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(template: str, variables: Mapping[str, str]) -> str:
    """Substitute ``{{ name }}`` placeholders; unknown names raise ``KeyError``.

    Values are escaped for label matchers; ``selector`` is inserted verbatim
    (it is PromQL itself, already rendered).
    """

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        value = variables[name]
        return value if name == "selector" else escape_label_value(value)

    return _PLACEHOLDER.sub(substitute, template)


def builtin_query(name: TemplateName, source: Source) -> str:
    """The PromQL template of a built-in check, over the given traffic source."""
    _, duration, error_codes = _METRICS[source]
    version = '{{ selector }}, version="{{ version }}"'
    window = "[{{ window }}]"
    if name == "error-rate":
        errors = _requests(source, f'{version}, code=~"{error_codes}"')
        # `or vector(0)`: a healthy version has no error series at all, which
        # must read as 0 errors, not as missing data.
        return (
            f"(sum(increase({errors}{window})) or vector(0))"
            f" / sum(increase({_requests(source, version)}{window}))"
        )
    if name == "latency":
        return (
            "histogram_quantile({{ quantile }}, sum by (le) "
            f"(rate({duration}_bucket{{{version}}}{window})))"
        )
    return f"sum(rate({_requests(source, version)}{window}))"


def requests_series(source: Source) -> str:
    """Template selecting every series of the source's request counter under the selector."""
    return _requests(source, "{{ selector }}")


def request_count_query(source: Source) -> str:
    """Template counting a version's requests over the window (for ``minRequests``)."""
    requests = _requests(source, '{{ selector }}, version="{{ version }}"')
    return f"sum(increase({requests}[{{{{ window }}}}]))"


def counter_queries(source: Source) -> tuple[str, str, str]:
    """Templates reading a version's raw cumulative counters per instance, for the judge.

    (requests, errors, histogram buckets by ``le``); raw counters, not rates,
    because the judge differences them itself and needs exact integers.
    """
    _, duration, error_codes = _METRICS[source]
    version = '{{ selector }}, version="{{ version }}"'
    errors = _requests(source, f'{version}, code=~"{error_codes}"')
    # by instance and pod: two targets behind one address (an HA pair) stay two series
    return (
        f"sum by (instance, pod) ({_requests(source, version)})",
        f"sum by (instance, pod) ({errors})",
        f"sum by (instance, pod, le) ({duration}_bucket{{{version}}})",
    )
