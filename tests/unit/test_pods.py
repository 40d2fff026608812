"""Reading pods as the kubelet reports them, and which states fail a step at once."""

from __future__ import annotations

from typing import Any

from autocanary.rollout.pods import ContainerView, PodView, failure


def kubelet_pod(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "web-canary-5c8-x2x", "labels": {"app": "web", "version": "v2"}},
        "spec": {"containers": [{"name": "app", "image": "registry/web:2.0"}]},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "False"}],
            **status,
        },
    }


def test_a_crash_looping_container_as_the_kubelet_reports_it() -> None:
    pod = PodView.from_json(
        kubelet_pod(
            containerStatuses=[
                {
                    "name": "app",
                    "ready": False,
                    "restartCount": 4,
                    "state": {
                        "waiting": {
                            "reason": "CrashLoopBackOff",
                            "message": "back-off 40s restarting failed container=app",
                        }
                    },
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
                }
            ]
        ),
        "version",
    )
    assert pod.name == "web-canary-5c8-x2x"
    assert pod.version == "v2"
    assert not pod.ready
    assert pod.restarts == 4
    assert pod.containers == (
        ContainerView(
            "app",
            ready=False,
            restarts=4,
            waiting_reason="CrashLoopBackOff",
            waiting_message="back-off 40s restarting failed container=app",
            last_exit_code=1,
        ),
    )
    assert failure([pod], max_restarts=None) == (
        "canary pod web-canary-5c8-x2x: container app CrashLoopBackOff (restarted 4 times; "
        "last exit code 1; back-off 40s restarting failed container=app)"
    )


def test_a_pod_with_nothing_reported_yet_is_not_a_failure() -> None:
    pod = PodView.from_json({"metadata": {"name": "p"}, "spec": {}}, "version")
    assert pod == PodView("p", {}, "unknown", False)
    assert failure([pod], max_restarts=0) is None


def test_the_version_falls_back_to_the_image_tag() -> None:
    obj = kubelet_pod()
    del obj["metadata"]["labels"]["version"]
    assert PodView.from_json(obj, "version").version == "2.0"


def test_init_container_restarts_count_and_a_ready_pod_with_restarts_is_judged_by_count() -> None:
    pod = PodView.from_json(
        kubelet_pod(
            initContainerStatuses=[{"name": "init", "restartCount": 1, "state": {}}],
            containerStatuses=[{"name": "app", "ready": True, "restartCount": 2, "state": {}}],
        ),
        "version",
    )
    assert pod.restarts == 3
    assert failure([pod], max_restarts=3) is None
    message = failure([pod], max_restarts=2)
    assert message is not None
    assert message.startswith("canary pod web-canary-5c8-x2x: restarted 3 times (maxRestarts 2)")


def test_the_first_failing_pod_by_name_is_named() -> None:
    pull = ContainerView("app", waiting_reason="ErrImagePull")
    pods = [PodView("b", {}, "v2", False, (pull,)), PodView("a", {}, "v2", False, (pull,))]
    assert failure(pods, max_restarts=None) == "canary pod a: container app ErrImagePull"


def test_waiting_while_creating_is_not_a_failure() -> None:
    creating = ContainerView("app", waiting_reason="ContainerCreating")
    assert failure([PodView("a", {}, "v2", False, (creating,))], max_restarts=0) is None
