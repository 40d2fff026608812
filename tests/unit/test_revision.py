"""Template revisions: normalisation, hashing, promotion template, version names."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from builders import pod_template

from autocanary.rollout.revision import (
    normalise,
    promoted_template,
    revision_of,
    role_labels,
    version_of,
)

ROLE = ["track"]


def manifest_template(image: str = "registry.local/shop/web:1.0", track: str = "canary") -> Any:
    """The same pod as ``pod_template`` but as written in a manifest: no API defaults."""
    return {
        "metadata": {"labels": {"app": "web", "track": track}},
        "spec": {
            "containers": [{"name": "web", "image": image, "ports": [{"containerPort": 8080}]}]
        },
    }


def test_same_pod_under_different_role_labels_hashes_equal() -> None:
    stable = pod_template(track="stable")
    canary = pod_template(track="canary")
    assert revision_of(stable, ROLE) == revision_of(canary, ROLE)


def test_role_labels_count_when_not_ignored() -> None:
    assert revision_of(pod_template(track="stable"), []) != revision_of(
        pod_template(track="canary"), []
    )


def test_defaulted_fields_do_not_change_the_hash() -> None:
    assert revision_of(manifest_template(), ROLE) == revision_of(pod_template(), ROLE)


def test_server_bookkeeping_does_not_change_the_hash() -> None:
    template = pod_template()
    touched = copy.deepcopy(template)
    touched["metadata"]["labels"]["pod-template-hash"] = "5d8f9c"
    touched["metadata"]["annotations"] = {
        "kubectl.kubernetes.io/last-applied-configuration": "{...}"
    }
    touched["metadata"]["creationTimestamp"] = "2025-01-01T00:00:00Z"
    assert revision_of(touched, ROLE) == revision_of(template, ROLE)


def test_probe_and_pull_policy_defaults_are_ignored() -> None:
    bare = manifest_template()
    bare["spec"]["containers"][0]["readinessProbe"] = {
        "httpGet": {"path": "/healthz", "port": 8080}
    }
    defaulted = copy.deepcopy(bare)
    container = defaulted["spec"]["containers"][0]
    container["imagePullPolicy"] = "IfNotPresent"
    container["readinessProbe"].update(
        {"timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3}
    )
    container["readinessProbe"]["httpGet"]["scheme"] = "HTTP"
    assert revision_of(bare, ROLE) == revision_of(defaulted, ROLE)


@pytest.mark.parametrize("image", ["web", "registry.local/shop/web:latest"])
def test_pull_policy_always_is_the_default_for_latest(image: str) -> None:
    bare = manifest_template(image)
    defaulted = copy.deepcopy(bare)
    defaulted["spec"]["containers"][0]["imagePullPolicy"] = "Always"
    assert revision_of(bare, ROLE) == revision_of(defaulted, ROLE)


def test_non_default_values_change_the_hash() -> None:
    base = pod_template()
    changed = copy.deepcopy(base)
    changed["spec"]["containers"][0]["imagePullPolicy"] = "Always"  # not the default for :1.0
    assert revision_of(base, ROLE) != revision_of(changed, ROLE)
    grace = copy.deepcopy(base)
    grace["spec"]["terminationGracePeriodSeconds"] = 60
    assert revision_of(base, ROLE) != revision_of(grace, ROLE)


def test_different_image_hashes_differently() -> None:
    assert revision_of(pod_template("web:1.0"), ROLE) != revision_of(pod_template("web:2.0"), ROLE)


def test_different_env_hashes_differently() -> None:
    plain = revision_of(pod_template(), ROLE)
    faulty = revision_of(pod_template(env={"ERROR_FRACTION": "0.5"}), ROLE)
    other = revision_of(pod_template(env={"ERROR_FRACTION": "0.1"}), ROLE)
    assert len({plain, faulty, other}) == 3


def test_version_label_is_part_of_the_revision() -> None:
    assert revision_of(pod_template(version="v1"), ROLE) != revision_of(
        pod_template(version="v2"), ROLE
    )


def test_revision_is_short_hex_and_independent_of_key_order() -> None:
    template = pod_template()
    reordered = {"spec": template["spec"], "metadata": template["metadata"]}
    revision = revision_of(template, ROLE)
    assert revision == revision_of(reordered, ROLE)
    assert len(revision) == 12
    int(revision, 16)


def test_normalise_does_not_modify_its_input() -> None:
    template = pod_template()
    before = copy.deepcopy(template)
    normalise(template, ROLE)
    assert template == before


def test_role_labels_adds_selector_keys_that_differ() -> None:
    assert role_labels(["track"], {"app": "web", "tier": "stable"}, {"app": "web"}) == {
        "track",
        "tier",
    }
    assert role_labels([], {"app": "web"}, {"app": "web"}) == set()


def test_promoted_template_is_the_canarys_with_the_stables_role_labels() -> None:
    stable = pod_template("web:1.0", track="stable", version="v1")
    canary = pod_template("web:2.0", track="canary", version="v2")
    canary["metadata"]["labels"]["canary-only"] = "yes"
    promoted = promoted_template(stable, canary, {"track", "canary-only"})
    labels = promoted["metadata"]["labels"]
    assert labels["track"] == "stable"
    assert labels["version"] == "v2"
    assert labels["app"] == "web"
    assert "canary-only" not in labels  # a role label the stable does not carry
    assert promoted["spec"] == canary["spec"]
    # The result hashes as the canary's revision, so the release counts as promoted.
    roles = {"track", "canary-only"}
    assert revision_of(promoted, roles) == revision_of(canary, roles)
    # Inputs untouched.
    assert canary["metadata"]["labels"]["track"] == "canary"


def test_promoted_template_when_the_canary_has_no_labels() -> None:
    stable = pod_template(track="stable")
    canary = pod_template("web:2.0")
    canary["metadata"]["labels"] = None
    promoted = promoted_template(stable, canary, {"track"})
    assert promoted["metadata"]["labels"] == {"track": "stable"}


@pytest.mark.parametrize(
    ("image", "version_label", "expected"),
    [
        ("registry.local/shop/web:2.1.0", None, "2.1.0"),
        ("registry.local:5000/shop/web:v3", None, "v3"),
        ("registry.local:5000/shop/web", None, "latest"),  # a port is not a tag
        ("web", None, "latest"),
        ("web@sha256:0123456789abcdef0123456789abcdef", None, "sha256:0123456789ab"),
        ("web:1.0@sha256:0123456789abcdef0123456789abcdef", None, "sha256:0123456789ab"),
        ("web:1.0", "v9", "v9"),  # the label wins
    ],
)
def test_version_of(image: str, version_label: str | None, expected: str) -> None:
    assert version_of(pod_template(image, version=version_label), "version") == expected


def test_version_of_uses_the_configured_label_and_falls_back() -> None:
    template = pod_template("web:1.4")
    template["metadata"]["labels"]["release"] = "blue"
    assert version_of(template, "release") == "blue"
    template["metadata"]["labels"]["release"] = ""
    assert version_of(template, "release") == "1.4"


def test_version_of_a_template_without_containers() -> None:
    assert version_of({"metadata": {}, "spec": {}}, "version") == "unknown"
