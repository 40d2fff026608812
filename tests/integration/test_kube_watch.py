"""The daemon's watch cache of Deployments, against the real API server.

The cache sees Deployments created, changed and deleted; a watch whose
resourceVersion the API server no longer has (410 Gone) lists again and
carries on; a namespace it may not list falls back to GETs. The daemon itself
ticks a rollout whose canary template changed at once (its interval is an
hour here: only the watch can bring that tick), and its start-up writes
nothing to an idle canary.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from autocanary.adapters.kube_watch import DeclarationCache, DeploymentCache, StateCache
from autocanary.adapters.kubernetes import DeploymentRecord, KubeClient
from autocanary.config.loader import parse_config
from autocanary.config.models import ROLLOUT_LABEL, Config
from autocanary.daemon.service import POOL_SPARE, Daemon
from autocanary.errors import KubernetesForbidden, ResourceNotFound
from autocanary.rollout.state import STATE_ANNOTATION, state_object_name
from autocanary_testbed.apps import daemon_command
from autocanary_testbed.controlplane import ControlPlane
from autocanary_testbed.http_checks import http_ok
from autocanary_testbed.procs import ManagedProcess, free_port
from autocanary_testbed.stack import app_deployment
from autocanary_testbed.waiting import wait_until

pytestmark = pytest.mark.integration

WAIT_S = 90.0  # a bound for a hang on a loaded 2-core machine, not a timing expectation
Change = tuple[str, DeploymentRecord | None, DeploymentRecord | None]


@pytest.fixture
def kube(kube_api: client.ApiClient) -> KubeClient:
    return KubeClient(kube_api, identity="itest-admin")


@pytest.fixture
def cache(kube: KubeClient, namespace: str) -> Iterator[tuple[DeploymentCache, list[Change]]]:
    changes: list[Change] = []
    lock = threading.Lock()

    def changed(
        ns: str, name: str, old: DeploymentRecord | None, new: DeploymentRecord | None
    ) -> None:
        with lock:
            changes.append((name, old, new))

    cache = DeploymentCache(kube, [namespace], on_change=changed)
    cache.start()
    try:
        assert cache.wait_synced(WAIT_S)
        yield cache, changes
    finally:
        cache.stop()


def _version(record: DeploymentRecord) -> str:
    return str(record.template["metadata"]["labels"]["version"])


def _cached(cache: DeploymentCache, namespace: str, name: str) -> DeploymentRecord | None:
    try:
        return cache.read_deployment(namespace, name)
    except ResourceNotFound:
        return None


def test_the_cache_sees_deployments_created_changed_and_deleted(
    cache: tuple[DeploymentCache, list[Change]], kube: KubeClient, namespace: str
) -> None:
    deployments, changes = cache
    assert deployments.synced(namespace)
    with pytest.raises(ResourceNotFound, match=r'deployments\.apps "web" not found'):
        deployments.read_deployment(namespace, "web")

    kube.create_deployment(namespace, app_deployment("web", "web", "stable", "v1", replicas=0))
    wait_until(
        lambda: _cached(deployments, namespace, "web") is not None, timeout=WAIT_S, what="created"
    )
    kube.patch_deployment(
        namespace,
        "web",
        {"spec": {"template": {"metadata": {"labels": {"version": "v2"}}}}},
        "change the template",
    )
    wait_until(
        lambda: (
            (found := _cached(deployments, namespace, "web")) is not None
            and _version(found) == "v2"
        ),
        timeout=WAIT_S,
        what="changed",
    )
    client.AppsV1Api(kube.api_client).delete_namespaced_deployment("web", namespace)
    wait_until(lambda: _cached(deployments, namespace, "web") is None, timeout=WAIT_S, what="gone")

    seen = [(name, old is not None, new is not None) for name, old, new in changes]
    assert ("web", False, True) in seen  # created
    assert ("web", True, False) in seen  # deleted
    versions = [(_version(old), _version(new)) for _, old, new in changes if old and new]
    assert ("v1", "v2") in versions
    # Kept without managedFields (most of an object's size), read once for the replicas' owner.
    assert all("managedFields" not in new.raw["metadata"] for _, _, new in changes if new)


def test_a_write_is_seen_by_the_next_read_at_once(
    cache: tuple[DeploymentCache, list[Change]], kube: KubeClient, namespace: str
) -> None:
    deployments, _ = cache
    kube.on_written = deployments.remember
    kube.create_deployment(namespace, app_deployment("web", "web", "stable", "v1", replicas=0))
    wait_until(
        lambda: _cached(deployments, namespace, "web") is not None, timeout=WAIT_S, what="created"
    )

    written = kube.scale(namespace, "web", 2)

    # No wait: the write's answer is in the cache before the watch delivers it (or the
    # watch has already brought a later version: the controller's status after it).
    read = deployments.read_deployment(namespace, "web")
    assert int(read.resource_version) >= int(written.resource_version)
    assert read.replicas == 2


def test_the_declarations_cache_follows_labelled_deployments_in_every_namespace(
    kube: KubeClient, control_plane: ControlPlane, namespace: str
) -> None:
    other = f"{namespace[:50]}-other"
    control_plane.create_namespace(other)
    calls: list[str] = []
    everywhere = DeclarationCache(kube, f"{ROLLOUT_LABEL}=true", on_request=calls.append)

    def declared() -> set[str]:
        found = everywhere.matching()
        assert found is not None
        return {f"{r.namespace}/{r.name}" for r in found if r.namespace in (namespace, other)}

    def create(ns: str, name: str, *, labelled: bool) -> None:
        body = app_deployment(name, name, "stable", "v1", replicas=0)
        if labelled:
            body["metadata"]["labels"][ROLLOUT_LABEL] = "true"
        kube.create_deployment(ns, body)

    try:
        # The same name in two namespaces, and one that declares nothing.
        create(namespace, "web", labelled=True)
        create(other, "web", labelled=True)
        create(namespace, "plain", labelled=False)
        assert everywhere.matching() is None  # not listed yet: the caller asks the API
        everywhere.start()
        assert everywhere.wait_synced(WAIT_S)
        assert declared() == {f"{namespace}/web", f"{other}/web"}

        # Labelled later: it arrives. Unlabelled: it leaves (the API server's watch
        # says DELETED when an object stops matching its selector). Deleted: it leaves.
        apps = client.AppsV1Api(kube.api_client)
        apps.patch_namespaced_deployment(
            "plain", namespace, {"metadata": {"labels": {ROLLOUT_LABEL: "true"}}}
        )
        wait_until(lambda: f"{namespace}/plain" in declared(), timeout=WAIT_S, what="labelled")
        apps.patch_namespaced_deployment(
            "web", namespace, {"metadata": {"labels": {ROLLOUT_LABEL: None}}}
        )
        wait_until(lambda: f"{namespace}/web" not in declared(), timeout=WAIT_S, what="unlabelled")
        apps.delete_namespaced_deployment("web", other)
        wait_until(lambda: declared() == {f"{namespace}/plain"}, timeout=WAIT_S, what="deleted")

        # One list and one watch for the whole cluster, whatever changed.
        assert calls == [
            "list_deployment_for_all_namespaces",
            "watch_deployment_for_all_namespaces",
        ]
    finally:
        everywhere.stop()
        control_plane.delete_namespace(other)


def test_an_expired_watch_lists_again_and_reports_what_changed_meanwhile(
    cache: tuple[DeploymentCache, list[Change]],
    control_plane: ControlPlane,
    kube: KubeClient,
    namespace: str,
) -> None:
    deployments, changes = cache
    kube.create_deployment(namespace, app_deployment("web", "web", "stable", "v1", replicas=0))
    wait_until(
        lambda: _cached(deployments, namespace, "web") is not None, timeout=WAIT_S, what="created"
    )

    # As after a long disconnect: the next watch resumes from a version the API server
    # has long compacted away, and it answers 410 Gone.
    state = deployments._namespaces[namespace]
    running: list[Any] = []

    def watching() -> bool:
        with deployments._lock:
            running[:] = [deployments._watches.get(namespace)]
            if running[0] is not None:
                state.resource_version = "1"
        return running[0] is not None

    wait_until(watching, timeout=WAIT_S, what="a watch running")
    # Break the watch at once (a stopped watch ends only at its next event, and a quiet
    # namespace may send none for minutes); the next one resumes from version 1.
    control_plane.restart_apiserver()

    wait_until(lambda: deployments.relists(namespace) >= 1, timeout=WAIT_S, what="listed again")
    kube.create_deployment(namespace, app_deployment("api", "api", "stable", "v1", replicas=0))
    wait_until(
        lambda: _cached(deployments, namespace, "api") is not None,
        timeout=WAIT_S,
        what="watched again",
    )
    assert _cached(deployments, namespace, "web") is not None
    assert any(name == "api" and old is None for name, old, _ in changes)


def test_the_cache_carries_on_after_an_api_server_restart(
    cache: tuple[DeploymentCache, list[Change]],
    control_plane: ControlPlane,
    kube: KubeClient,
    namespace: str,
) -> None:
    deployments, _ = cache
    kube.create_deployment(namespace, app_deployment("web", "web", "stable", "v1", replicas=0))
    wait_until(
        lambda: _cached(deployments, namespace, "web") is not None, timeout=WAIT_S, what="created"
    )

    control_plane.restart_apiserver()
    # Served from memory while the watch reconnects.
    assert deployments.read_deployment(namespace, "web").name == "web"
    kube.create_deployment(namespace, app_deployment("api", "api", "stable", "v1", replicas=0))

    wait_until(
        lambda: _cached(deployments, namespace, "api") is not None,
        timeout=WAIT_S,
        what="a Deployment created after the restart seen",
    )


def test_a_namespace_it_may_not_list_is_read_with_gets(
    control_plane: ControlPlane, kube: KubeClient, namespace: str
) -> None:
    kube.create_deployment(namespace, app_deployment("web", "web", "stable", "v1", replicas=0))
    user = "itest-no-list"
    rbac: Any = client.RbacAuthorizationV1Api(kube.api_client)
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": user},
            "rules": [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": user},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": user},
            "subjects": [{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}],
        },
    )
    limited = KubeClient(control_plane.impersonating_client(user))
    deployments = DeploymentCache(limited, [namespace])
    deployments.start()
    try:
        # Role bindings reach the authorizer through a watch too: wait until a GET passes.
        wait_until(lambda: _readable(limited, namespace), timeout=WAIT_S, what="the Role in force")
        assert deployments.wait_synced(WAIT_S)  # forbidden counts as settled
        assert not deployments.synced(namespace)
        assert deployments.read_deployment(namespace, "web").name == "web"
    finally:
        deployments.stop()


def _readable(kube: KubeClient, namespace: str) -> bool:
    try:
        kube.read_deployment(namespace, "web")
    except Exception:  # noqa: BLE001 -- 403 until the binding is in force
        return False
    return True


# ---- the states' cache -------------------------------------------------------------------------


def test_the_states_cache_follows_every_writer_and_keeps_only_states(
    kube: KubeClient, namespace: str
) -> None:
    canary = kube.create_deployment(
        namespace, app_deployment("web-canary", "web", "canary", "v1", replicas=0)
    )
    core = client.CoreV1Api(kube.api_client)
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "app-settings"}, "data": {"big": "x" * 1000}}
    )
    writer = KubeClient(kube.api_client, identity="another-writer")  # no cache behind it
    first = writer.save_state(canary, writer.read_state(canary), '{"phase": "progressing"}')
    states = StateCache(kube, [namespace])
    kube.on_state_written = states.remember
    states.start()
    try:
        assert states.wait_synced(WAIT_S)
        assert states.synced(namespace)
        assert states.read_state(canary) == kube.read_state(canary) == first
        # Only the states are kept: the namespace's other ConfigMaps are not.
        assert set(states._objects[namespace]) == {state_object_name("web-canary")}

        # Another writer's state arrives through the watch ...
        second = writer.save_state(canary, first, '{"phase": "paused"}')
        wait_until(
            lambda: states.read_state(canary) == second, timeout=WAIT_S, what="watched write"
        )
        # ... the daemon's own write is read back at once, before its watch event ...
        third = kube.save_state(canary, second, '{"phase": "progressing"}')
        assert states.read_state(canary) == third
        # ... and a deleted state reads as none, as a GET's 404 does.
        core.delete_namespaced_config_map(state_object_name("web-canary"), namespace)
        wait_until(
            lambda: states.read_state(canary).source == "none", timeout=WAIT_S, what="deleted"
        )
        assert kube.read_state(canary).source == "none"
    finally:
        states.stop()


def test_a_namespace_whose_configmaps_it_may_not_list_reads_states_with_gets(
    control_plane: ControlPlane, kube: KubeClient, namespace: str
) -> None:
    canary = kube.create_deployment(
        namespace, app_deployment("web-canary", "web", "canary", "v1", replicas=0)
    )
    written = kube.save_state(canary, kube.read_state(canary), '{"phase": "progressing"}')
    user = "itest-no-configmap-list"
    rbac: Any = client.RbacAuthorizationV1Api(kube.api_client)
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": user},
            "rules": [
                {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get"]},
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": [state_object_name("web-canary")],
                    "verbs": ["get"],
                },
            ],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": user},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": user},
            "subjects": [{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}],
        },
    )
    limited = KubeClient(control_plane.impersonating_client(user))

    def in_force() -> bool:
        try:
            limited.read_state(canary)
        except KubernetesForbidden:
            return False  # until the binding reaches the authorizer
        return True

    wait_until(in_force, timeout=WAIT_S, what="the Role in force")
    states = StateCache(limited, [namespace])
    states.start()
    try:
        assert states.wait_synced(WAIT_S)  # forbidden counts as settled
        assert not states.synced(namespace)
        assert states.read_state(canary) == written  # a GET, by name
    finally:
        states.stop()


# ---- the daemon: a changed canary ticks its rollout at once ----------------------------------


def _logs(process: ManagedProcess) -> list[dict[str, Any]]:
    events = []
    for line in process.log_path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


@pytest.fixture
def daemon(
    control_plane: ControlPlane, kube: KubeClient, namespace: str, tmp_workdir: Path
) -> Iterator[ManagedProcess]:
    """The daemon as a process, its one rollout ticked by nothing but watches and polls."""
    # A stable with no replicas would block the release instead of starting it.
    for name, track, replicas in (("web", "stable", 2), ("web-canary", "canary", 0)):
        kube.create_deployment(
            namespace, app_deployment(name, "web", track, "v1", replicas=replicas)
        )
    port = free_port()
    config = {
        # Never asked: no release gets as far as an analysis here.
        "prometheus": {"url": f"http://127.0.0.1:{free_port()}"},
        "daemon": {
            "listen": f"127.0.0.1:{port}",
            "logFormat": "json",
            "leaderElection": {"enabled": False},
        },
        "rollouts": [
            {
                "name": "web",
                "namespace": namespace,
                "stable": "web",
                # Only the watch (or a wait's poll) can bring a tick within a test's bounds.
                "interval": "1h",
                "analysis": {"checks": [{"name": "e", "template": "error-rate", "max": "1%"}]},
            }
        ],
    }
    config_path = tmp_workdir / "autocanary.yaml"
    config_path.write_text(yaml.safe_dump(config))
    process = ManagedProcess.start(
        "daemon",
        daemon_command(config_path, control_plane.kubeconfig_path),
        log_dir=tmp_workdir / "logs",
    )
    try:
        process.wait_ready(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), WAIT_S, "healthy")
        process.wait_ready(
            lambda: any(e.get("event") == "tick" for e in _logs(process)), WAIT_S, "first tick"
        )
        yield process
    finally:
        process.stop(timeout=30)


def _ticks(process: ManagedProcess) -> list[dict[str, Any]]:
    return [e for e in _logs(process) if e.get("event") == "tick"]


def test_the_daemon_ticks_a_changed_canary_at_once_and_writes_nothing_at_start_up(
    kube: KubeClient, namespace: str, daemon: ManagedProcess
) -> None:
    idle = kube.read_deployment(namespace, "web-canary")
    assert idle.generation == 1  # nothing written at start-up
    assert STATE_ANNOTATION not in idle.annotations

    kube.patch_deployment(
        namespace,
        "web-canary",
        {"spec": {"template": {"metadata": {"labels": {"version": "v2"}}}}},
        "release v2",
    )

    daemon.wait_ready(
        lambda: any(
            e.get("event") == "transition" and e.get("reason") == "ReleaseDetected"
            for e in _logs(daemon)
        ),
        WAIT_S,
        "the release detected through the watch",
    )
    # The tick's own line follows its transitions' lines.
    daemon.wait_ready(
        lambda: any(e.get("phase") == "progressing" for e in _ticks(daemon)),
        WAIT_S,
        "the release's tick logged",
    )
    assert [t["phase"] for t in _ticks(daemon)][:2] == ["idle", "progressing"]


def test_a_release_waiting_on_its_pods_is_woken_by_the_watch_not_polled(
    kube: KubeClient, namespace: str, daemon: ManagedProcess
) -> None:
    # A canary whose pod no node takes: the release waits for it to be Ready.
    kube.patch_deployment(
        namespace,
        "web-canary",
        {
            "spec": {
                "template": {
                    "metadata": {"labels": {"version": "v2"}},
                    "spec": {"nodeSelector": {"autocanary.io/test": "no-such-node"}},
                }
            }
        },
        "release v2, never scheduled",
    )
    daemon.wait_ready(
        lambda: any(e.get("stage") == "waitingReady" for e in _ticks(daemon)),
        WAIT_S,
        "the release waiting for its canary pod",
    )
    waiting_since = len(_ticks(daemon))
    time.sleep(25)
    # Polled every 2 s this was a dozen ticks; the watch wakes it when the pod's
    # Deployment changes, and a 10 s poll stands in for what no status shows.
    assert len(_ticks(daemon)) - waiting_since <= 4

    # A schedulable release supersedes it: the canary's status (its pod Ready)
    # reaches the daemon through the watch, and the step is analysed.
    kube.patch_deployment(
        namespace,
        "web-canary",
        {
            "spec": {
                "template": {
                    "metadata": {"labels": {"version": "v3"}},
                    "spec": {"nodeSelector": None},
                }
            }
        },
        "release v3",
    )
    daemon.wait_ready(
        lambda: any(e.get("stage") == "analysing" for e in _ticks(daemon)),
        WAIT_S,
        "the v3 step analysed",
    )


def test_the_daemon_pools_a_connection_per_worker_beside_the_watches(
    kube_api: client.ApiClient, namespace: str
) -> None:
    config = parse_config(
        yaml.safe_dump(
            {
                "prometheus": {"url": "http://127.0.0.1:9"},
                "daemon": {"workers": 24},
                "rollouts": [
                    {
                        "name": "web",
                        "namespace": namespace,
                        "stable": "web",
                        "analysis": {"checks": [{"name": "up", "query": "vector(0)", "max": 1}]},
                    }
                ],
            }
        )
    )
    kube = KubeClient(kube_api, identity="itest-admin")
    daemon = Daemon(Path("unused.yaml"), config, kube, identity="pool")
    try:
        pools = kube_api.rest_client.pool_manager.connection_pool_kw
        # Every worker's call at once, the Leases' and Events' beside them, the
        # Deployments', pods' and states' watches of the namespace: none opens a
        # connection the pool then drops.
        assert pools["maxsize"] == 24 + POOL_SPARE + 3
    finally:  # never started: only what the constructor opened
        daemon._notifier.close(timeout=5)
        daemon._prometheus.close()


def test_the_declarations_watch_runs_only_while_discovery_searches_every_namespace(
    kube_api: client.ApiClient, namespace: str
) -> None:
    def config(namespaces: list[str]) -> Config:
        return parse_config(
            yaml.safe_dump(
                {
                    "prometheus": {"url": "http://127.0.0.1:9"},
                    "discovery": {"enabled": True, "namespaces": namespaces},
                    "rollouts": [],
                }
            )
        )

    kube = KubeClient(kube_api, identity="itest-admin")
    daemon = Daemon(Path("unused.yaml"), config([namespace]), kube, identity="declarations")
    pools = kube_api.rest_client.pool_manager.connection_pool_kw
    try:
        named = pools["maxsize"]
        daemon._discover()
        assert daemon._everywhere is None, "namespaces named: their caches serve discovery"

        daemon.config = config([])
        daemon._discover()
        everywhere = daemon._everywhere
        assert everywhere is not None
        assert everywhere.synced(DeclarationCache.EVERYWHERE)
        assert pools["maxsize"] == named + 1  # room for its watch

        # A reload names the namespaces again: the cluster-wide watch stops.
        daemon.config = config([namespace])
        daemon._discover()
        assert daemon._everywhere is None
        assert not any(t.is_alive() for t in everywhere._threads)
    finally:
        if daemon._everywhere is not None:
            daemon._everywhere.stop()
        daemon._notifier.close(timeout=5)
        daemon._prometheus.close()
