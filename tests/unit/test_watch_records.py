"""What the watch caches keep of an object reads as the whole object does."""

from __future__ import annotations

from typing import Any

import pytest

from autocanary.adapters.kube_watch import PodRecord, StateRecord
from autocanary.adapters.kubernetes import CONSUMED_ANNOTATION, DeploymentRecord, stored_state
from autocanary.errors import InvalidResource
from autocanary.rollout.pods import PodView
from autocanary.rollout.state import STATE_KEY


def _pod(image: str = "registry/web:2.0", **labels: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "web-canary-5c8-x2x",
            "namespace": "shop",
            "uid": "0f0e",
            "resourceVersion": "812",
            "labels": {"app": "web", "track": "canary", **labels},
            "deletionTimestamp": "2026-05-01T12:00:00Z",
            "managedFields": [{"manager": "kube-controller-manager", "fieldsV1": {}}],
            "ownerReferences": [{"kind": "ReplicaSet", "name": "web-canary-5c8"}],
        },
        "spec": {
            "containers": [
                {"name": "app", "image": image, "env": [{"name": "X", "value": "1" * 500}]}
            ],
            "nodeName": "kwok-node-0",
        },
        "status": {
            "phase": "Running",
            "podIP": "10.1.0.7",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [
                {
                    "name": "app",
                    "ready": False,
                    "restartCount": 4,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                    "lastState": {"terminated": {"exitCode": 1}},
                }
            ],
        },
    }


def test_a_trimmed_pod_reads_as_the_whole_pod() -> None:
    for pod, label in ((_pod(version="v2"), "version"), (_pod(), "version"), (_pod(), "tier")):
        record = PodRecord.from_json(pod)

        assert PodView.from_json(record.raw, label) == PodView.from_json(pod, label)


def test_a_trimmed_pod_keeps_its_identity_and_drops_the_rest() -> None:
    record = PodRecord.from_json(_pod(version="v2"))

    assert (record.name, record.namespace, record.uid, record.resource_version) == (
        "web-canary-5c8-x2x",
        "shop",
        "0f0e",
        "812",
    )
    assert record.labels == {"app": "web", "track": "canary", "version": "v2"}
    assert "managedFields" not in record.raw["metadata"]
    assert record.raw["spec"] == {"containers": [{"name": "app", "image": "registry/web:2.0"}]}
    assert "podIP" not in record.raw["status"]


def _state_configmap(name: str = "web-canary.autocanary-state") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": "7a7b",
            "resourceVersion": "913",
            "labels": {"app.kubernetes.io/managed-by": "autocanary"},
            "annotations": {CONSUMED_ANNOTATION: "0f0e/4/abc", "other": "y" * 500},
            "managedFields": [{"manager": "autocanary", "fieldsV1": {}}],
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web-canary", "uid": "c1"}
            ],
        },
        "data": {STATE_KEY: '{"phase": "progressing"}', "note": "z" * 500},
    }


def _canary(uid: str = "c1") -> DeploymentRecord:
    return DeploymentRecord.from_json(
        {
            "metadata": {
                "name": "web-canary",
                "namespace": "shop",
                "uid": uid,
                "resourceVersion": "5",
                "generation": 1,
            },
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}}, "template": {}},
            "status": {},
        }
    )


def test_a_kept_state_configmap_reads_as_the_whole_one() -> None:
    whole = _state_configmap()
    kept = StateRecord.from_json(whole)
    for canary in (_canary(), _canary(uid="another")):  # owned, and stale
        assert stored_state(canary, kept.raw) == stored_state(canary, whole)
    assert stored_state(_canary(), kept.raw).text == '{"phase": "progressing"}'
    assert kept.raw["data"] == {STATE_KEY: '{"phase": "progressing"}'}
    assert "managedFields" not in kept.raw["metadata"]
    assert (kept.name, kept.uid, kept.resource_version) == (
        "web-canary.autocanary-state",
        "7a7b",
        "913",
    )


def test_other_configmaps_are_not_kept() -> None:
    with pytest.raises(InvalidResource, match="app-settings holds no rollout's state"):
        StateRecord.from_json(_state_configmap("app-settings"))
