"""Three daemon replicas share 30 rollouts through shard Leases; one is SIGKILLed mid-release.

One rollout is the demo app, released for real: testpage processes behind the
Service, the probe's traffic, judged on Prometheus's scrapes of them. The 29
others are cheap: KWOK's pods (Ready at once, nothing runs in them) judged on
a query Prometheus answers without traffic (``vector(0)`` passes its check;
every fifth rollout's ``vector(1)`` fails it and must be rolled back), because
what they show is who acts on them, not traffic.

Every release is started once the three replicas hold their fair shares (8
shards: 3, 3 and 2). The replica that detected the real release is killed
while it is analysing; its shards expire and the others take them over.
Asserted afterwards: every release ended as its check says; each rollout's
Events came from one replica after another, never back and forth, and none
from the killed one after the kill (``reportingInstance``, ordered by
resourceVersion); and each rollout's state, read in the order of its
resourceVersions from a watch, only ever moved forward.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import urllib3
from e2e_helpers import StackFactory
from kubernetes import client, watch

from autocanary.rollout import state as state_codec
from autocanary_testbed.controlplane import ControlPlane
from autocanary_testbed.stack import CanaryStack, app_deployment
from autocanary_testbed.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SHARDS = 8
CHEAP = 29
REPLICAS = ("daemon-a", "daemon-b", "daemon-c")
WAIT_S = 240.0  # a bound for a hang, not a timing expectation
#: Where a rollout's progress ranks: a state write may only keep or raise it.
_RANK = {
    "idle": 0,
    "progressing": 1,
    "paused": 1,
    "promoting": 2,
    "rollingBack": 2,
    "succeeded": 3,
    "rolledBack": 3,
}


def _cheap_rollout(i: int, namespace: str) -> dict[str, Any]:
    fails = i % 5 == 0
    return {
        "name": f"c{i}",
        "namespace": namespace,
        "stable": f"c{i}",
        "interval": "2s",
        "progressDeadline": "60s",
        "steps": [{"canary": 1, "hold": "3s"}, {"canary": "100%", "hold": "2s"}],
        "analysis": {
            "warmup": "1s",
            # The query's answer is the same at any window; a short one keeps steps short.
            "window": "2s",
            "minRequests": 0,
            "failureLimit": 0,
            "checks": [
                {"name": "answers", "query": "vector(1)" if fails else "vector(0)", "max": 0.5}
            ],
        },
    }


def _shards_held(port: int) -> int | None:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5, trust_env=False).text
    except httpx.HTTPError:
        return None
    found = re.search(r"^autocanary_shards_held (\S+)$", text, re.MULTILINE)
    return int(float(found.group(1))) if found else None


class StateHistory:
    """Every state write of the rollouts in some namespaces, from watches, in resourceVersion order.

    The state is read where it is stored: the canary's state annotation, or a
    state ConfigMap beside it (``<canary>.autocanary-state``, key ``state``).
    """

    def __init__(self, api: client.ApiClient, namespaces: list[str]) -> None:
        self.writes: dict[str, list[tuple[int, str]]] = {}  # canary -> [(resourceVersion, json)]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        self._threads = [
            threading.Thread(target=self._follow, args=(lister, ns), daemon=True)
            for ns in namespaces
            for lister in (apps.list_namespaced_deployment, core.list_namespaced_config_map)
        ]

    def __enter__(self) -> StateHistory:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def _follow(self, lister: Callable[..., Any], namespace: str) -> None:
        version = ""
        while not self._stop.is_set():
            stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                lister, namespace, resource_version=version, timeout_seconds=5
            )
            try:
                for event in stream:
                    obj = event["raw_object"]
                    version = obj["metadata"]["resourceVersion"]
                    self._record(obj)
            except client.ApiException as e:
                if e.status != 410:
                    raise
                version = ""  # too old: start over from now (writes already recorded stay)
            except urllib3.exceptions.HTTPError:
                time.sleep(0.5)  # the stream broke: resume from the last version seen

    def _record(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        if obj.get("kind") == "ConfigMap" or "data" in obj:
            if not meta["name"].endswith(".autocanary-state"):
                return
            canary = meta["name"].removesuffix(".autocanary-state")
            text = (obj.get("data") or {}).get("state")
        else:
            canary = meta["name"]
            text = (meta.get("annotations") or {}).get(state_codec.STATE_ANNOTATION)
        if not text:
            return
        with self._lock:
            writes = self.writes.setdefault(canary, [])
            if not writes or writes[-1][1] != text:  # a status update repeats the state
                writes.append((int(meta["resourceVersion"]), text))

    def states(self, canary: str) -> list[state_codec.RolloutState]:
        """The rollout's states in resourceVersion order."""
        with self._lock:
            writes = sorted(self.writes.get(canary, []))
        return [state_codec.loads(text) for _, text in writes]


def _our_events(core: client.CoreV1Api, namespace: str) -> list[dict[str, Any]]:
    response: Any = core.list_namespaced_event(namespace, _preload_content=False)
    items: list[dict[str, Any]] = json.loads(response.data)["items"]
    ours = [e for e in items if (e.get("source") or {}).get("component") == "autocanary"]
    return sorted(ours, key=lambda e: int(e["metadata"]["resourceVersion"]))


def _runs(instances: list[str]) -> list[str]:
    """Consecutive repeats collapsed: [a, a, b, b] -> [a, b]."""
    return [x for i, x in enumerate(instances) if i == 0 or instances[i - 1] != x]


@pytest.fixture
def cheap_namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A namespace whose pods KWOK makes Ready at once (no process runs them)."""
    name = f"e2e-cheap-{uuid.uuid4().hex[:6]}"
    control_plane.create_namespace(name)
    try:
        yield name
    finally:
        control_plane.delete_namespace(name)


def _release_cheap(apps: client.AppsV1Api, namespace: str, i: int) -> None:
    template = app_deployment(f"c{i}-canary", f"c{i}", "canary", "v2", replicas=0)["spec"][
        "template"
    ]
    apps.patch_namespaced_deployment(
        f"c{i}-canary", namespace, [{"op": "replace", "path": "/spec/template", "value": template}]
    )


@pytest.mark.timeout(900)
def test_three_replicas_share_thirty_rollouts_and_one_is_killed_mid_release(
    stack_factory: StackFactory, cheap_namespace: str
) -> None:
    stack: CanaryStack = stack_factory(daemon=False)
    apps, core = stack.apps, stack.core
    for i in range(CHEAP):
        for body in (
            app_deployment(f"c{i}", f"c{i}", "stable", "v1", replicas=2),
            app_deployment(f"c{i}-canary", f"c{i}", "canary", "v1", replicas=0),
        ):
            created: Any = body
            apps.create_namespaced_deployment(cheap_namespace, created)
    config = stack.config()
    config["daemon"]["leaderElection"]["shards"] = SHARDS
    config["rollouts"] += [_cheap_rollout(i, cheap_namespace) for i in range(CHEAP)]
    for name in REPLICAS:
        stack.start_daemon(name, config=config)

    def balanced() -> bool:
        held = [_shards_held(stack.daemon_ports[name]) for name in REPLICAS]
        return None not in held and sorted(held) == [2, 3, 3]  # type: ignore[type-var]

    wait_until(balanced, timeout=WAIT_S, what="the shards shared 3, 3, 2")

    with StateHistory(stack.api, [stack.namespace, cheap_namespace]) as history:
        stack.release("v2")
        for i in range(CHEAP):
            _release_cheap(apps, cheap_namespace, i)

        def detected_by() -> str:
            for event in _our_events(core, stack.namespace):
                if event["reason"] == "ReleaseDetected":
                    return str(event["reportingInstance"])
            return ""

        wait_until(lambda: bool(detected_by()), timeout=WAIT_S, what="the real release detected")
        victim = detected_by()
        stack.wait_for(
            lambda s: s.phase == "progressing" and s.stage == "analysing", WAIT_S, "analysing"
        )
        stack.stop_daemon(victim, kill=True)
        # Anything written after this resourceVersion was written after the kill.
        listed: Any = core.list_namespaced_event(cheap_namespace, limit=1)
        killed_rv = int(listed.metadata.resource_version)

        final = stack.wait_settled(timeout=WAIT_S)
        for i in range(CHEAP):
            wait_until(
                lambda i=i: any(  # type: ignore[misc]
                    e["reason"] in ("Promoted", "RolledBack")
                    and e["involvedObject"]["name"] in (f"c{i}", f"c{i}-canary")
                    for e in _our_events(core, cheap_namespace)
                ),
                timeout=WAIT_S,
                what=f"rollout c{i} settled",
            )
        time.sleep(2)  # the last writes reach the watches

    # Every release ended as its evidence says.
    assert final.phase == "succeeded", final.message
    cheap_events = _our_events(core, cheap_namespace)
    for i in range(CHEAP):
        reasons = [
            e["reason"]
            for e in cheap_events
            if e["involvedObject"]["name"] in (f"c{i}", f"c{i}-canary")
        ]
        expected = "RolledBack" if i % 5 == 0 else "Promoted"
        assert expected in reasons, (i, reasons)
        assert reasons.count("ReleaseDetected") == 1, (i, reasons)
        stable: Any = apps.read_namespaced_deployment(f"c{i}", cheap_namespace)
        canary: Any = apps.read_namespaced_deployment(f"c{i}-canary", cheap_namespace)
        version = stable.spec.template.metadata.labels["version"]
        assert version == ("v1" if i % 5 == 0 else "v2"), i
        assert (stable.spec.replicas, canary.spec.replicas) == (2, 0), i

    # No rollout acted on by two replicas: its Events come from one replica, or from
    # the killed one and then from one other, never back and forth.
    by_rollout: dict[str, list[str]] = {}
    real_events = _our_events(core, stack.namespace)
    for ns, events in ((stack.namespace, real_events), (cheap_namespace, cheap_events)):
        for e in events:
            rollout = e["involvedObject"]["name"].removesuffix("-canary")
            by_rollout.setdefault(f"{ns}/{rollout}", []).append(e["reportingInstance"])
    assert len(by_rollout) == CHEAP + 1
    for rollout, instances in by_rollout.items():
        runs = _runs(instances)
        assert len(runs) == len(set(runs)), f"{rollout} acted on back and forth: {runs}"
    late = [
        (e["involvedObject"]["name"], e["reason"])
        for e in (*real_events, *cheap_events)
        if e["reportingInstance"] == victim and int(e["metadata"]["resourceVersion"]) > killed_rv
    ]
    assert not late, f"the killed replica still acted: {late}"
    real = _runs(by_rollout[f"{stack.namespace}/{stack.settings.app}"])
    assert real[0] == victim, real  # it detected the release
    assert real[-1] != victim, real  # and a survivor took it over and finished it
    assert {i for runs in by_rollout.values() for i in runs} == set(REPLICAS)

    # Each rollout's state only moved forward, write after write (by resourceVersion).
    canaries = [stack.canary_name, *(f"c{i}-canary" for i in range(CHEAP))]
    for canary in canaries:
        states = [s for s in history.states(canary) if s.revision]
        assert states, f"no state write of {canary} seen"
        assert states[-1].phase in ("succeeded", "rolledBack"), (canary, states[-1].phase)
        for before, after in itertools.pairwise(states):
            assert after.revision == before.revision, canary
            old = (_RANK[before.phase], before.step if _RANK[before.phase] == 1 else 0)
            new = (_RANK[after.phase], after.step if _RANK[after.phase] == 1 else 0)
            assert new >= old, (
                f"{canary} went back: {before.phase}/{before.step} -> {after.phase}/{after.step}"
            )
