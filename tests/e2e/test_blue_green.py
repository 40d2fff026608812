"""Blue/green releases on the test bed: real traffic through the active Service's EndpointSlices.

The stack runs the app as blue/green (``StackSettings.blue_green``): Service
``testpage`` selects the stable's version, ``testpage-preview`` the release's,
each followed by its own proxy and loaded by its own probe. Every scenario
watches the active Service as kube-proxy does (its EndpointSlices, from the
first listing on) and replays its write history from the API, so "switched in
one write" and "never both versions" are read from the cluster, not from the
daemon's own account.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import pytest
from e2e_helpers import StackFactory, stable_labels, told_reasons
from kubernetes import client, watch

from autocanary_testbed.errors import HarnessError
from autocanary_testbed.kubeproxy import ServiceEndpoints, rotation
from autocanary_testbed.serviceproxy import ServiceProxy
from autocanary_testbed.stack import CanaryStack

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

_T = 10  # seconds per API call
_SAMPLE_S = 1.0  # how often the users' probe's counts are read


class ActiveWatch:
    """The active Service as users meet it: every rotation, and every write of the Service."""

    def __init__(self, stack: CanaryStack) -> None:
        self.stack = stack
        self._lock = threading.Lock()
        self._rotations: list[frozenset[str]] = []  # pod names
        # The users' probe's answers by version, read every second.
        self._answers: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name="answers", daemon=True)
        self._holder = ServiceProxy()  # never started: only holds the backends
        self._endpoints = ServiceEndpoints(
            stack.api,
            stack.cp.pod_network,
            stack.namespace,
            stack.settings.app,
            self._holder,
            port_name="http",
            on_change=self._changed,
        )
        service: Any = client.CoreV1Api(stack.api).read_namespaced_service(
            stack.settings.app, stack.namespace, _request_timeout=_T
        )
        self.since = str(service.metadata.resource_version)

    def _changed(self, _backends: list[str]) -> None:
        # Called by the watch thread with the slices it just applied.
        pods = frozenset(e.pod for e in rotation(self._endpoints.endpoints()))
        with self._lock:
            self._rotations.append(pods)

    def _sample(self) -> None:
        assert self.stack.probe is not None
        while not self._stop.wait(_SAMPLE_S):
            counts: dict[str, float] = {}
            try:
                samples = self.stack.probe.samples("probe_requests_total")
            except HarnessError:
                continue  # a missed second only merges two intervals: never hides a mix
            for labels, value in samples:
                if labels.get("code", "").startswith("2"):
                    counts[labels["version"]] = counts.get(labels["version"], 0.0) + value
            self._answers.append(counts)

    def __enter__(self) -> ActiveWatch:
        self._endpoints.start()
        self._sampler.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._sampler.join(10)
        self._endpoints.stop()

    def mixed_intervals(self) -> int:
        """Seconds in which users got answers from both versions (the probe's own counts)."""
        answers = list(self._answers)
        mixed = 0
        for before, after in itertools.pairwise(answers):
            grew = {v for v, n in after.items() if n > before.get(v, 0.0)}
            mixed += len(grew & {"v1", "v2"}) > 1
        return mixed

    def versions(self) -> list[list[str]]:
        """Each rotation in order, as the sorted versions of its pods.

        A pod's version is its ReplicaSet's (pod names are ``<replicaset>-<suffix>``);
        ReplicaSets outlive the pods they scaled away.
        """
        sets: Any = client.AppsV1Api(self.stack.api).list_namespaced_replica_set(
            self.stack.namespace, _request_timeout=_T
        )
        version_of = {
            rs.metadata.name: rs.spec.template.metadata.labels.get("version", "?")
            for rs in sets.items
        }
        with self._lock:
            seen = list(self._rotations)
        return [sorted(version_of[pod.rsplit("-", 1)[0]] for pod in r) for r in seen]

    def selector_history(self) -> list[str]:
        """The active Service's version label after each write since the watch began."""
        seen: list[str] = []
        stream: Any = watch.Watch()  # type: ignore[no-untyped-call]  # untyped in kubernetes
        for event in stream.stream(
            client.CoreV1Api(self.stack.api).list_namespaced_service,
            self.stack.namespace,
            field_selector=f"metadata.name={self.stack.settings.app}",
            resource_version=self.since,
            timeout_seconds=2,
            _request_timeout=(5.0, 15.0),
        ):
            assert event["type"] == "MODIFIED", event["type"]
            seen.append((event["object"].spec.selector or {}).get("version", "<none>"))
        return seen


@pytest.fixture
def blue_green(stack_factory: StackFactory) -> CanaryStack:
    return stack_factory(blue_green=True)


def assert_one_version_at_a_time_and_whole(active: ActiveWatch, total: int = 3) -> None:
    shown = active.versions()
    assert [r for r in shown if len(set(r)) > 1] == [], f"both versions at once: {shown}"
    full = next(i for i, r in enumerate(shown) if len(r) >= total)
    short = [r for r in shown[full:] if len(r) < total]
    assert short == [], f"users' capacity dropped below {total}: {shown}"


def selector(stack: CanaryStack, service: str) -> dict[str, str]:
    read: Any = client.CoreV1Api(stack.api).read_namespaced_service(
        service, stack.namespace, _request_timeout=_T
    )
    return dict(read.spec.selector or {})


def settled(stack: CanaryStack, timeout: float = 240) -> Any:
    return stack.wait_for(
        lambda s: s.canary_version == "v2" and s.phase in ("succeeded", "rolledBack"),
        timeout,
        "the blue/green release settled",
    )


def test_a_healthy_release_is_switched_in_one_write_and_promoted(blue_green: CanaryStack) -> None:
    stack = blue_green
    with ActiveWatch(stack) as active:
        stack.release("v2")
        final = settled(stack)
        time.sleep(2)  # the rotations after the canary's pods left

    assert final.phase == "succeeded", final.message
    assert active.selector_history() == ["v2"], "one write, straight from v1 to v2"
    assert_one_version_at_a_time_and_whole(active)
    assert active.versions()[-1] == ["v2", "v2", "v2"]
    assert active.mixed_intervals() <= 1, "both versions answered only around the switch"
    assert stable_labels(stack)["version"] == "v2"
    assert stack.replicas() == (3, 0)
    assert selector(stack, stack.preview_service) == {"app": "testpage", "version": "v2"}
    reasons = told_reasons(stack)
    assert reasons[0] == "ReleaseDetected"
    assert reasons.count("Switched") == 1
    assert reasons[-1] == "Promoted"
    assert [v for v in final.verdicts if v.verdict == "fail"] == []


def test_a_bad_release_fails_on_the_preview_and_the_active_service_is_never_written(
    blue_green: CanaryStack,
) -> None:
    stack = blue_green
    with ActiveWatch(stack) as active:
        stack.release("v2", env={"FAULT_ERROR_RATE": "0.1"})
        final = settled(stack, 180)

    assert final.phase == "rolledBack", final.message
    assert final.step == 0, "failed on the preview"
    assert active.selector_history() == [], "the active Service was never written"
    assert selector(stack, stack.settings.app) == {"app": "testpage", "version": "v1"}
    assert {v for r in active.versions() for v in r} == {"v1"}, "users never met v2"
    assert_one_version_at_a_time_and_whole(active)
    assert stack.replicas() == (3, 0)
    assert "Switched" not in told_reasons(stack)
    alert = stack.receiver.wait_for(lambda b: b.get("kind") == "rolledBack", 60, "/oncall")
    assert [c["name"] for c in alert["checks"] if c["verdict"] == "fail"] == ["error-rate"]


def test_a_failure_after_the_switch_switches_back_within_one_interval(
    stack_factory: StackFactory,
) -> None:
    # Healthy through the preview (a 12s hold, judged after a 20s window), failing from
    # 40s after its pods start: on live traffic, in a window long enough to notice.
    stack = stack_factory(blue_green=True, window="60s")
    with ActiveWatch(stack) as active:
        stack.release("v2", env={"FAULT_ERROR_RATE": "0.2", "FAULT_AFTER": "40s"})
        final = settled(stack, 240)
        time.sleep(2)

    assert final.phase == "rolledBack", final.message
    reasons = told_reasons(stack)
    assert "Switched" in reasons, f"the faults began before the switch: {reasons}"
    assert final.step == 1, "failed in the window after the switch"
    assert active.selector_history() == ["v2", "v1"], "switched, then switched back"
    assert_one_version_at_a_time_and_whole(active)
    assert active.mixed_intervals() <= 2, "both versions answered only around the switches"
    assert active.versions()[-1] == ["v1", "v1", "v1"]
    assert selector(stack, stack.settings.app) == {"app": "testpage", "version": "v1"}
    assert stable_labels(stack)["version"] == "v1"
    assert stack.replicas() == (3, 0)
    # Switched back by the tick that judged the failure: its Event says so.
    rolled = [
        e["message"]
        for e in stack.events()
        if e["reason"] == "RolledBack" and (e.get("source") or {}).get("component") == "autocanary"
    ]
    assert len(rolled) == 1
    assert "the active Service testpage switches back to v1" in rolled[0]
    alert = stack.receiver.wait_for(lambda b: b.get("kind") == "rolledBack", 60, "/oncall")
    assert [c["name"] for c in alert["checks"] if c["verdict"] == "fail"] == ["error-rate"]


def test_a_daemon_killed_between_the_switch_and_the_end_of_the_window_resumes(
    stack_factory: StackFactory,
) -> None:
    stack = stack_factory(blue_green=True, window="40s")
    with ActiveWatch(stack) as active:
        stack.release("v2")
        switched = stack.wait_for(
            lambda s: s.phase == "progressing" and s.step == 1, 180, "switched: in the window"
        )
        stack.stop_daemon("daemon-a", kill=True)
        time.sleep(3)
        assert stack.state().step == 1, "nothing acts while the daemon is down"
        stack.start_daemon("daemon-b")
        final = settled(stack, 240)
        time.sleep(2)

    assert final.phase == "succeeded", final.message
    assert final.started_at == switched.started_at, "the same release, resumed"
    assert active.selector_history() == ["v2"], "one switch, never repeated nor undone"
    assert_one_version_at_a_time_and_whole(active)
    assert active.versions()[-1] == ["v2", "v2", "v2"]
    reasons = told_reasons(stack)
    assert reasons.count("Switched") == 1
    assert reasons.count("Promoted") == 1
    assert stack.replicas() == (3, 0)


def test_commands_and_status_on_a_blue_green_release(stack_factory: StackFactory) -> None:
    stack = stack_factory(blue_green=True, window="10m")
    common = ("--config", str(stack.config_path), "--kubeconfig", str(stack.cp.kubeconfig_path))
    with ActiveWatch(stack) as active:
        stack.release("v2")
        stack.wait_for(lambda s: s.phase == "progressing" and s.step == 1, 180, "in the window")

        table = stack.cli("status", *common)
        _, row, *_ = table.splitlines()
        assert row.split()[:4] == [stack.settings.app, stack.namespace, "progressing", "2/2"]
        stack.cli("pause", stack.settings.app, *common)
        stack.wait_for(lambda s: s.phase == "paused", 60, "paused by command")
        assert selector(stack, stack.settings.app)["version"] == "v2", "users stay on v2"
        stack.cli("resume", stack.settings.app, *common)
        stack.wait_for(lambda s: s.phase == "progressing", 60, "resumed")

        stack.cli("abort", stack.settings.app, *common)
        aborted = stack.wait_for(lambda s: s.phase == "rolledBack", 60, "rolled back by abort")
        assert "aborted by command" in aborted.message
        assert selector(stack, stack.settings.app)["version"] == "v1"

        stack.cli("retry", stack.settings.app, *common)
        stack.wait_for(lambda s: s.phase == "progressing", 60, "the retried release")
        stack.cli("promote", stack.settings.app, *common)
        final = stack.wait_for(lambda s: s.phase == "succeeded", 180, "promoted by command")
        time.sleep(2)

    assert final.canary_version == "v2"
    assert active.selector_history() == ["v2", "v1", "v2"], "switch, back by abort, promote"
    assert_one_version_at_a_time_and_whole(active)
    assert stable_labels(stack)["version"] == "v2"
    assert stack.replicas() == (3, 0)
    reasons = told_reasons(stack)
    assert reasons.count("RolledBack") == 1
    assert reasons.count("Promoted") == 1
    stack.receiver.wait_for(lambda b: b.get("kind") == "rolledBack", 60, "/oncall")
