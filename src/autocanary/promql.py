"""PromQL templates: the built-in queries and ``{{ variable }}`` substitution.

Templates are plain strings with ``{{ name }}`` placeholders. Values that land
inside label matchers are escaped, so a version like ``v1"2`` cannot break
out of its quotes. Built-in templates cover the metrics of autocanary's own
probe and test app, and an app's own request counter and duration histogram
(:class:`Metrics`), so a minimal config needs no PromQL at all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

TemplateName = Literal["error-rate", "latency", "request-rate"]
Source = Literal["probe", "testpage", "app", "gateway"]
BuiltinSource = Literal["probe", "testpage"]

#: One sample of an instant vector as Prometheus answers a query: labels, value.
Sample = tuple[Mapping[str, str], float]

#: Variables a query template may use, with what each holds.
VARIABLES: Mapping[str, str] = {
    "namespace": "the rollout's namespace",
    "rollout": "the rollout's name",
    "stable": "the stable Deployment's name",
    "canary": "the canary Deployment's name",
    "version": "the version being measured (canary, or stable for the relative comparison)",
    "canary_version": "the canary's version",
    "stable_version": "the stable's version",
    "pods": "a regex matching the names of the measured side's pods (canary or stable), "
    'as read from the API at this analysis: pod=~"{{ pods }}"',
    "pod_template_hashes": "a regex matching the measured side's pod-template-hash values",
    "interval": "the analysis interval as a PromQL duration, e.g. 30s",
    "window": "how far back this analysis looks, as a PromQL duration (analysis.window, "
    "at least the time since the previous analysis); use it in range selectors: [{{ window }}]",
    "quantile": "the check's quantile (latency checks)",
    "selector": "the traffic source's label matchers (see analysis.selector)",
    "service": "gateway rollouts: the measured side's backend Service (canaryService or "
    "stableService)",
    "canary_service": "gateway rollouts: the canary's backend Service (gateway.canaryService)",
    "stable_service": "gateway rollouts: the stable's backend Service (gateway.stableService)",
}

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")

#: Default label matchers per traffic source: the probe labels its series by
#: target (one target per rollout, named after it); the apps' series get the
#: namespace label from the scrape configuration (Kubernetes service discovery).
DEFAULT_SELECTORS: Mapping[Source, str] = {
    "probe": 'target="{{ rollout }}"',
    "testpage": 'namespace="{{ namespace }}"',
    "app": 'namespace="{{ namespace }}"',
    # The backend Service names the side (see analysis.gateway.servicePattern).
    "gateway": 'service=~".+"',
}


@dataclass(frozen=True)
class Metrics:
    """A traffic source's request counter and duration histogram, and how to read them."""

    requests: str  # the counter, e.g. http_requests_total
    duration: str  # the histogram's name, without _bucket
    status_label: str  # the counter's label holding the status code or class
    errors: str  # regex of status_label values that are errors
    version: str  # label matchers tying a series to the side measured (a template)
    matchers: str = ""  # extra matchers on the counter only

    def counter(self, matchers: str) -> str:
        """The request counter with ``matchers`` (after the source's own)."""
        own = f"{self.matchers}, " if self.matchers else ""
        return f"{self.requests}{{{own}{matchers}}}"


#: The probe's and the test app's metrics: testpage counts /healthz and /metrics
#: too; only "/" is the application's traffic.
BUILTIN_METRICS: Mapping[BuiltinSource, Metrics] = {
    "probe": Metrics(
        "probe_requests_total",
        "probe_request_duration_seconds",
        "code",
        "5..|error",
        'version="{{ version }}"',
    ),
    "testpage": Metrics(
        "testpage_requests_total",
        "testpage_request_duration_seconds",
        "code",
        "5..",
        'version="{{ version }}"',
        'path="/"',
    ),
}


def _metrics(source: Metrics | BuiltinSource) -> Metrics:
    return source if isinstance(source, Metrics) else BUILTIN_METRICS[source]


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


def names_regex(names: Sequence[str]) -> str:
    """A regex matching exactly these names (pod names, hashes), for ``=~"..."``."""
    # Kubernetes names hold only [a-z0-9.-]; "." is the one regex character among them.
    return "|".join(sorted(n.replace(".", "[.]") for n in names))


def builtin_query(name: TemplateName, source: Metrics | BuiltinSource) -> str:
    """The PromQL template of a built-in check, over the given traffic source's metrics."""
    m = _metrics(source)
    version = f"{{{{ selector }}}}, {m.version}"
    window = "[{{ window }}]"
    if name == "error-rate":
        errors = m.counter(f'{version}, {m.status_label}=~"{m.errors}"')
        # `or vector(0)`: a healthy version has no error series at all, which
        # must read as 0 errors, not as missing data.
        return (
            f"(sum(increase({errors}{window})) or vector(0))"
            f" / sum(increase({m.counter(version)}{window}))"
        )
    if name == "latency":
        return (
            "histogram_quantile({{ quantile }}, sum by (le) "
            f"(rate({m.duration}_bucket{{{version}}}{window})))"
        )
    return f"sum(rate({m.counter(version)}{window}))"


def requests_series(source: Metrics | BuiltinSource) -> str:
    """Template selecting every series of the source's request counter under the selector."""
    return _metrics(source).counter("{{ selector }}")


def request_count_query(source: Metrics | BuiltinSource) -> str:
    """Template counting a version's requests over the window (for ``minRequests``)."""
    m = _metrics(source)
    requests = m.counter(f"{{{{ selector }}}}, {m.version}")
    return f"sum(increase({requests}[{{{{ window }}}}]))"


def counter_queries(source: Metrics | BuiltinSource) -> tuple[str, str, str]:
    """Templates reading a version's raw cumulative counters per instance, for the judge.

    (requests, errors, histogram buckets by ``le``); raw counters, not rates,
    because the judge differences them itself and needs exact integers.
    """
    m = _metrics(source)
    version = f"{{{{ selector }}}}, {m.version}"
    errors = m.counter(f'{version}, {m.status_label}=~"{m.errors}"')
    # by instance and pod: two targets behind one address (an HA pair) stay two series
    return (
        f"sum by (instance, pod) ({m.counter(version)})",
        f"sum by (instance, pod) ({errors})",
        f"sum by (instance, pod, le) ({m.duration}_bucket{{{version}}})",
    )
