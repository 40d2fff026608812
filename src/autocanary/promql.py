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
    # requests counter, duration histogram, regex of error codes
    "probe": ("probe_requests_total", "probe_request_duration_seconds", "5..|error"),
    "testpage": ("testpage_requests_total", "testpage_request_duration_seconds", "5.."),
}


def variables_in(template: str) -> set[str]:
    """Return the placeholder names a template uses."""
    return set(_PLACEHOLDER.findall(template))


def unknown_variables(template: str) -> set[str]:
    """Return placeholder names that are not in :data:`VARIABLES`."""
    return variables_in(template) - set(VARIABLES)


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
    requests, duration, error_codes = _METRICS[source]
    version = '{{ selector }}, version="{{ version }}"'
    if name == "error-rate":
        # `or vector(0)`: a healthy version has no error series at all, which
        # must read as 0 errors, not as missing data.
        return (
            f'(sum(increase({requests}{{{version}, code=~"{error_codes}"}}[{{{{ interval }}}}]))'
            f" or vector(0))"
            f" / sum(increase({requests}{{{version}}}[{{{{ interval }}}}]))"
        )
    if name == "latency":
        return (
            "histogram_quantile({{ quantile }}, sum by (le) "
            f"(rate({duration}_bucket{{{version}}}[{{{{ interval }}}}])))"
        )
    return f"sum(rate({requests}{{{version}}}[{{{{ interval }}}}]))"


def request_count_query(source: Source) -> str:
    """Template counting a version's requests over the interval (for ``minRequests``)."""
    requests = _METRICS[source][0]
    return (
        f'sum(increase({requests}{{{{{{ selector }}}}, version="{{{{ version }}}}"}}'
        "[{{ interval }}]))"
    )


def counter_queries(source: Source) -> tuple[str, str, str]:
    """Templates reading a version's raw cumulative counters per instance, for the sequential judge.

    (requests, errors, histogram buckets by ``le``); raw counters, not rates,
    because the judge differences them itself and needs exact integers.
    """
    requests, duration, error_codes = _METRICS[source]
    version = '{{ selector }}, version="{{ version }}"'
    return (
        f"sum by (instance) ({requests}{{{version}}})",
        f'sum by (instance) ({requests}{{{version}, code=~"{error_codes}"}})',
        f"sum by (instance, le) ({duration}_bucket{{{version}}})",
    )
