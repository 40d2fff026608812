"""Revisions: a stable hash of a pod template, and the version a template names.

Two templates that would run the same pods hash the same: labels that only
mark the role (``track: canary``) and fields the API server fills in with
their defaults are left out. That lets the daemon tell "the canary runs
something new" from "the canary already equals the stable".
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

#: A Kubernetes object (or part of one, such as a pod template) as JSON.
JSON = dict[str, Any]

# Fields the API server defaults, with their default values: a manifest that
# omits them and an object read back from the server must hash the same.
_POD_SPEC_DEFAULTS: Mapping[str, Any] = {
    "restartPolicy": "Always",
    "terminationGracePeriodSeconds": 30,
    "dnsPolicy": "ClusterFirst",
    "securityContext": {},
    "schedulerName": "default-scheduler",
    "enableServiceLinks": True,
    "preemptionPolicy": "PreemptLowerPriority",
    "priority": 0,
}
_CONTAINER_DEFAULTS: Mapping[str, Any] = {
    "terminationMessagePath": "/dev/termination-log",
    "terminationMessagePolicy": "File",
    "resources": {},
}
_PROBE_DEFAULTS: Mapping[str, Any] = {
    "timeoutSeconds": 1,
    "periodSeconds": 10,
    "successThreshold": 1,
    "failureThreshold": 3,
}
# Annotations that record who touched an object, not what it runs.
_VOLATILE_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


def _drop_defaults(obj: JSON, defaults: Mapping[str, Any]) -> None:
    for key, default in defaults.items():
        if key in obj and obj[key] == default:
            del obj[key]


def _normalise_container(container: JSON) -> None:
    _drop_defaults(container, _CONTAINER_DEFAULTS)
    image = str(container.get("image", ""))
    # imagePullPolicy defaults to Always for :latest/untagged images, else IfNotPresent.
    tagless = ":" not in image.rsplit("/", 1)[-1] and "@" not in image
    default_pull = "Always" if tagless or image.endswith(":latest") else "IfNotPresent"
    if container.get("imagePullPolicy") == default_pull:
        del container["imagePullPolicy"]
    for port in container.get("ports") or []:
        if port.get("protocol") == "TCP":
            del port["protocol"]
    for probe_key in ("livenessProbe", "readinessProbe", "startupProbe"):
        probe = container.get(probe_key)
        if isinstance(probe, dict):
            _drop_defaults(probe, _PROBE_DEFAULTS)
            http = probe.get("httpGet")
            if isinstance(http, dict) and http.get("scheme") == "HTTP":
                del http["scheme"]


def _prune_empty(value: Any) -> Any:
    if isinstance(value, dict):
        pruned = {k: _prune_empty(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_prune_empty(v) for v in value]
    return value


def normalise(template: JSON, ignored_labels: Iterable[str]) -> JSON:
    """The parts of a pod template that decide what runs, without role labels and defaults."""
    result = copy.deepcopy(template)
    metadata = result.setdefault("metadata", {})
    labels = metadata.get("labels") or {}
    for key in set(ignored_labels) | {"pod-template-hash"}:
        labels.pop(key, None)
    metadata["labels"] = labels
    annotations = metadata.get("annotations") or {}
    for key in _VOLATILE_ANNOTATIONS:
        annotations.pop(key, None)
    metadata["annotations"] = annotations
    for key in ("creationTimestamp", "name", "namespace", "uid", "resourceVersion"):
        metadata.pop(key, None)
    spec = result.setdefault("spec", {})
    _drop_defaults(spec, _POD_SPEC_DEFAULTS)
    for key in ("containers", "initContainers"):
        for container in spec.get(key) or []:
            _normalise_container(container)
    pruned: JSON = _prune_empty(result)
    return pruned


def revision_of(template: JSON, ignored_labels: Iterable[str]) -> str:
    """A short, stable hash of the normalised template."""
    canonical = json.dumps(
        normalise(template, ignored_labels), sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def role_labels(
    configured: Iterable[str],
    stable_selector: Mapping[str, str],
    canary_selector: Mapping[str, str],
) -> set[str]:
    """Labels marking stable vs canary: the configured ones, and selector keys that differ."""
    differing = {
        key
        for key in set(stable_selector) | set(canary_selector)
        if stable_selector.get(key) != canary_selector.get(key)
    }
    return set(configured) | differing


def promoted_template(
    stable_template: JSON, canary_template: JSON, keep_labels: Iterable[str]
) -> JSON:
    """The canary's template, keeping the stable's own values for ``keep_labels``."""
    result = copy.deepcopy(canary_template)
    labels = result.setdefault("metadata", {}).setdefault("labels", {}) or {}
    stable_labels = (stable_template.get("metadata") or {}).get("labels") or {}
    for key in keep_labels:
        if key in stable_labels:
            labels[key] = stable_labels[key]
        else:
            labels.pop(key, None)
    result["metadata"]["labels"] = labels
    return result


def version_of(template: JSON, version_label: str) -> str:
    """The version a template runs: its version label, else the first container's image tag."""
    labels = (template.get("metadata") or {}).get("labels") or {}
    if labels.get(version_label):
        return str(labels[version_label])
    containers = (template.get("spec") or {}).get("containers") or []
    if containers:
        image = str(containers[0].get("image", ""))
        if "@" in image:
            return image.rsplit("@", 1)[1][:19]
        name = image.rsplit("/", 1)[-1]
        if ":" in name:
            return name.rsplit(":", 1)[1]
        return "latest"
    return "unknown"
