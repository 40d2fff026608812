"""What the watch caches keep of an object reads as the whole object does."""

from __future__ import annotations

from typing import Any

from autocanary.adapters.kube_watch import PodRecord
from autocanary.rollout.pods import PodView


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
