"""``autocanary run`` as a real subprocess against the local control plane and a real Prometheus.

The daemon serves /healthz, /readyz and /metrics; reloads its config on a file
change or SIGHUP, rejecting an invalid one and keeping the old; keeps every
healthy rollout going while another one fails each tick; and on SIGTERM exits
0 and hands its Lease back. Everything is read from outside: HTTP, the JSON
log lines, the cluster.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client

from autocanary.adapters.kubernetes import KubeClient
from autocanary.rollout import state as state_codec
from autocanary_testbed.apps import daemon_command
from autocanary_testbed.controlplane import ControlPlane
from autocanary_testbed.http_checks import http_ok
from autocanary_testbed.monitoring import PrometheusServer
from autocanary_testbed.procs import ManagedProcess, free_port
from autocanary_testbed.stack import app_deployment
from autocanary_testbed.waiting import wait_until

pytestmark = pytest.mark.integration

PrometheusFactory = Callable[..., PrometheusServer]
WAIT_S = 90.0  # a bound for a hang on a loaded 2-core machine, not a timing expectation
IDENTITY = "daemon-a"


@dataclass
class Daemon:
    """A running ``autocanary run`` and ways to look at it from outside."""

    process: ManagedProcess
    port: int
    config_path: Path
    config: dict[str, Any]
    kube: KubeClient
    namespace: str

    def get(self, path: str) -> httpx.Response:
        with httpx.Client(trust_env=False, timeout=10) as http:
            return http.get(f"http://127.0.0.1:{self.port}{path}")

    def metrics(self) -> str:
        response = self.get("/metrics")
        response.raise_for_status()
        return response.text

    def metric(self, sample: str) -> float | None:
        """The value of the exposition line starting with ``sample`` ('name{labels}')."""
        for line in self.metrics().splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    def logs(self) -> list[dict[str, Any]]:
        """The JSON log lines so far (anything else the process printed is skipped)."""
        events = []
        for line in self.process.log_path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    def logged(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.logs()
            if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
        ]

    def wait_logged(self, event: str, count: int = 1, **fields: Any) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []

        def enough() -> bool:
            found[:] = self.logged(event, **fields)
            return len(found) >= count

        self.process.wait_ready(enough, WAIT_S, f"logging {count} x {event!r} {fields}")
        return found

    def write_config(self, text: str) -> None:
        """Replace the config file at once, as a ConfigMap update does (no half-written file)."""
        staged = self.config_path.with_suffix(".staged")
        staged.write_text(text)
        os.replace(staged, self.config_path)

    def state(self, name: str) -> state_codec.RolloutState:
        raw = self.kube.read_state(self.kube.read_deployment(self.namespace, name)).text
        return state_codec.loads(raw) if raw else state_codec.RolloutState()


def rollout(namespace: str, name: str, stable: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "stable": stable,
        "interval": "2s",
        "progressDeadline": "5m",
        "steps": [{"canary": 1, "hold": "10s"}, {"canary": "100%", "hold": "10s"}],
        "analysis": {
            "minRequests": 10,
            "inconclusiveLimit": 100,
            "checks": [{"name": "error-rate", "template": "error-rate", "max": "1%"}],
        },
    }


def daemon_config(namespace: str, prometheus_url: str, port: int) -> dict[str, Any]:
    return {
        "prometheus": {"url": prometheus_url, "timeout": "2s"},
        "daemon": {
            "listen": f"127.0.0.1:{port}",
            "logFormat": "json",
            # These tests count a settled rollout's ticks (a reloaded config still runs it):
            # it ticks every interval here. tests/e2e/test_settled_rollouts.py runs the
            # shipped resync.
            "settledResync": "2s",
            "leaderElection": {
                "namespace": namespace,
                "leaseDuration": "3s",
                "renewDeadline": "2s",
                "retryPeriod": "0.5s",
            },
        },
        "rollouts": [
            # Its Deployments were never created: it fails every tick.
            rollout(namespace, "broken", "ghost"),
            rollout(namespace, "web", "web"),
        ],
    }


@pytest.fixture
def daemon(
    control_plane: ControlPlane,
    kube_api: client.ApiClient,
    namespace: str,
    prometheus_factory: PrometheusFactory,
    tmp_workdir: Path,
) -> Iterator[Daemon]:
    kube = KubeClient(kube_api, identity="itest-admin")
    for name, track, replicas in (("web", "stable", 3), ("web-canary", "canary", 0)):
        kube.create_deployment(
            namespace, app_deployment(name, "web", track, "v1", replicas=replicas)
        )
    prometheus = prometheus_factory([])  # answers every query with nothing
    port = free_port()
    config = daemon_config(namespace, prometheus.url, port)
    config_path = tmp_workdir / "autocanary.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    process = ManagedProcess.start(
        IDENTITY,
        daemon_command(config_path, control_plane.kubeconfig_path, IDENTITY),
        log_dir=tmp_workdir / "logs",
    )
    try:
        process.wait_ready(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), WAIT_S, "healthy")
        yield Daemon(process, port, config_path, config, kube, namespace)
    finally:
        process.stop(timeout=30)


def lease_holder(daemon: Daemon) -> str | None:
    lease = daemon.kube.read_lease(daemon.namespace, "autocanary")
    return None if lease is None else str(lease["spec"].get("holderIdentity") or "")


# ---- serving --------------------------------------------------------------------------------


def test_serves_health_readiness_and_metrics(daemon: Daemon) -> None:
    assert daemon.get("/healthz").status_code == 200
    daemon.process.wait_ready(
        lambda: daemon.get("/readyz").status_code == 200, WAIT_S, "ready (the API answered)"
    )
    daemon.wait_logged("tick", rollout="web")

    text = daemon.metrics()

    assert daemon.get("/healthz").text == "ok\n"
    assert daemon.get("/nothing-here").status_code == 404
    ns = daemon.namespace
    assert f'autocanary_rollout_phase{{namespace="{ns}",phase="idle",rollout="web"}} 1.0' in text
    assert "# TYPE autocanary_rollout_phase gauge" in text
    assert daemon.metric("autocanary_leader") == 1.0
    assert lease_holder(daemon) == IDENTITY
    started = daemon.logged("daemon started")
    assert len(started) == 1
    assert started[0]["rollouts"] == ["broken", "web"]
    assert started[0]["identity"] == IDENTITY


# ---- one broken rollout never breaks the others ---------------------------------------------


def test_a_broken_rollout_backs_off_while_a_healthy_one_progresses(daemon: Daemon) -> None:
    daemon.wait_logged("tick", rollout="web")
    # Ship v2 to the healthy rollout's canary.
    template = daemon.kube.read_deployment(daemon.namespace, "web-canary").template
    template["metadata"]["labels"]["version"] = "v2"
    template["spec"]["containers"][0]["image"] = "autocanary/testpage:v2"
    daemon.kube.replace_template(daemon.namespace, "web-canary", template)

    wait_until(
        lambda: daemon.state("web-canary").stage == "analysing",
        timeout=WAIT_S,
        what="the web rollout analysing its first step",
    )
    failures = daemon.wait_logged("tick failed", rollout="broken")
    # A missing Deployment is permanent: no retry every interval (2s) but after 30s.
    # Five more ticks of the healthy rollout pass without a second attempt.
    ticks = len(daemon.logged("tick", rollout="web"))
    daemon.wait_logged("tick", count=ticks + 5, rollout="web")
    assert len(daemon.logged("tick failed", rollout="broken")) == 1

    state = daemon.state("web-canary")
    assert state.phase == "progressing"
    assert state.canary_version == "v2"
    assert daemon.kube.read_deployment(daemon.namespace, "web-canary").replicas == 1
    assert daemon.kube.read_deployment(daemon.namespace, "web").replicas == 2
    reasons = [e["reason"] for e in daemon.kube.list_events(daemon.namespace, "web-canary")]
    assert "ReleaseDetected" in reasons

    (failure,) = failures
    assert failure["level"] == "error"
    assert failure["error_type"] == "ResourceNotFound"
    assert (failure["kind"], failure["failures"], failure["retry_in"]) == ("permanent", 1, "30s")
    assert failure["namespace"] == daemon.namespace
    # Every line of a rollout names revision and step, unknown while nothing can be read.
    assert (failure["revision"], failure["step"]) == (None, None)
    assert f"{daemon.namespace}/ghost-canary" in failure["error"]
    assert "not found" in failure["error"]
    errors = daemon.metric(
        'autocanary_tick_errors_total{error="ResourceNotFound",rollout="broken"}'
    )
    assert errors == 1.0
    ns = daemon.namespace
    broken = f'namespace="{ns}",rollout="broken"'
    assert daemon.metric(f'autocanary_rollout_error{{kind="permanent",{broken}}}') == 1.0
    assert daemon.metric(f'autocanary_rollout_error{{kind="transient",{broken}}}') == 0.0
    web = f'namespace="{ns}",rollout="web"'
    assert daemon.metric(f'autocanary_rollout_error{{kind="permanent",{web}}}') == 0.0
    # Every line about a rollout names it, its namespace, revision and step (null if unknown).
    lines = [e for e in daemon.logs() if e.get("rollout")]
    assert {e["rollout"] for e in lines} == {"broken", "web"}
    for line in lines:
        assert {"namespace", "revision", "step"} <= line.keys(), line
        assert line["namespace"] == ns, line
    progressing = [e for e in lines if e["rollout"] == "web" and e.get("phase") == "progressing"]
    assert progressing
    assert all(e["step"] == 1 and e["revision"] for e in progressing)
    assert (
        daemon.metric('autocanary_tick_errors_total{error="ResourceNotFound",rollout="web"}')
        is None
    )
    assert daemon.process.is_running()


# ---- a permanent error: RBAC denies one rollout -----------------------------------------------


def _role(namespace: str, deployment_verbs: list[str]) -> dict[str, Any]:
    return {
        "metadata": {"name": "autocanary", "namespace": namespace},
        "rules": [
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": deployment_verbs},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "update"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        ],
    }


def service_account_kubeconfig(
    control_plane: ControlPlane,
    kube_api: client.ApiClient,
    grants: dict[str, list[str]],
    path: Path,
) -> Path:
    """A kubeconfig for a ServiceAccount with deploy/rbac.yaml's rules in each namespace.

    Only the verbs on Deployments differ, as ``grants`` says per namespace. The
    account lives in the first namespace; each one gets a Role and RoleBinding.
    """
    core: Any = client.CoreV1Api(kube_api)
    rbac: Any = client.RbacAuthorizationV1Api(kube_api)
    home = next(iter(grants))
    core.create_namespaced_service_account(home, {"metadata": {"name": "autocanary"}})
    for namespace, verbs in grants.items():
        rbac.create_namespaced_role(namespace, _role(namespace, verbs))
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "autocanary", "namespace": namespace},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "autocanary",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "autocanary", "namespace": home}],
            },
        )
    token = core.create_namespaced_service_account_token(
        "autocanary", home, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "bed",
                        "cluster": {
                            "server": control_plane.server_url,
                            "certificate-authority": str(control_plane.ca_cert_path),
                        },
                    }
                ],
                "users": [{"name": "autocanary", "user": {"token": token}}],
                "contexts": [{"name": "bed", "context": {"cluster": "bed", "user": "autocanary"}}],
                "current-context": "bed",
            }
        )
    )
    return path


@pytest.fixture
def denied_namespace(control_plane: ControlPlane, namespace: str) -> Iterator[str]:
    name = f"{namespace[:50]}-denied"
    control_plane.create_namespace(name)
    try:
        yield name
    finally:
        control_plane.delete_namespace(name)


def test_a_rollout_forbidden_by_rbac_backs_off_and_says_so_while_the_other_progresses(
    control_plane: ControlPlane,
    kube_api: client.ApiClient,
    namespace: str,
    denied_namespace: str,
    prometheus_factory: PrometheusFactory,
    tmp_workdir: Path,
) -> None:
    """The daemon may read but not patch the shop's Deployments: it cannot start its release."""
    admin = KubeClient(kube_api, identity="itest-admin")
    apps = {namespace: "web", denied_namespace: "shop"}
    for ns, app in apps.items():
        for name, track, replicas in ((app, "stable", 3), (f"{app}-canary", "canary", 0)):
            admin.create_deployment(ns, app_deployment(name, app, track, "v1", replicas=replicas))
    kubeconfig = service_account_kubeconfig(
        control_plane,
        kube_api,
        {namespace: ["get", "patch"], denied_namespace: ["get"]},
        tmp_workdir / "autocanary.kubeconfig",
    )
    port = free_port()
    config = daemon_config(namespace, prometheus_factory([]).url, port)
    config["daemon"]["leaderElection"] = {"enabled": False}
    config["rollouts"] = [rollout(ns, app, app) for ns, app in apps.items()]
    config_path = tmp_workdir / "autocanary.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    process = ManagedProcess.start(
        IDENTITY,
        daemon_command(config_path, kubeconfig, IDENTITY),
        log_dir=tmp_workdir / "logs",
    )
    try:
        process.wait_ready(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), WAIT_S, "healthy")
        daemon = Daemon(process, port, config_path, config, admin, namespace)
        for ns, app in apps.items():
            template = admin.read_deployment(ns, f"{app}-canary").template
            template["metadata"]["labels"]["version"] = "v2"
            template["spec"]["containers"][0]["image"] = "autocanary/testpage:v2"
            admin.replace_template(ns, f"{app}-canary", template)

        (failure,) = daemon.wait_logged("tick failed", rollout="shop")
        assert failure["level"] == "error"
        assert failure["error_type"] == "KubernetesForbidden"
        assert (failure["kind"], failure["failures"], failure["retry_in"]) == (
            "permanent",
            1,
            "30s",
        )
        assert failure["namespace"] == denied_namespace
        assert "forbidden (403)" in failure["error"]
        assert "shop-canary" in failure["error"]
        # The release was found: the line names the canary's revision (no step before it starts).
        assert isinstance(failure["revision"], str)
        assert len(failure["revision"]) >= 8
        assert failure["step"] is None

        # The other rollout goes on; the forbidden one is not retried every interval (2s).
        wait_until(
            lambda: daemon.state("web-canary").stage == "analysing",
            timeout=WAIT_S,
            what="the web rollout analysing its first step",
        )
        ticks = len(daemon.logged("tick", rollout="web"))
        daemon.wait_logged("tick", count=ticks + 5, rollout="web")
        assert len(daemon.logged("tick failed", rollout="shop")) == 1
        assert admin.read_deployment(namespace, "web-canary").replicas == 1
        shop = admin.read_deployment(denied_namespace, "shop-canary")
        assert shop.replicas == 0  # nothing acted on (its state may say what was decided)

        denied = f'namespace="{denied_namespace}",rollout="shop"'
        assert daemon.metric(f'autocanary_rollout_error{{kind="permanent",{denied}}}') == 1.0
        assert daemon.metric(f'autocanary_rollout_error{{kind="transient",{denied}}}') == 0.0
        granted = f'namespace="{namespace}",rollout="web"'
        assert daemon.metric(f'autocanary_rollout_error{{kind="permanent",{granted}}}') == 0.0

        events = [
            e
            for e in admin.list_events(denied_namespace, "shop-canary")
            if e["reason"] == "PermanentError"
        ]
        assert len(events) == 1
        assert events[0]["type"] == "Warning"
        assert "forbidden (403)" in events[0]["message"]
        assert "Retried with backoff (from 30s, doubling up to 10m)" in events[0]["message"]
        assert process.is_running()
    finally:
        process.stop(timeout=30)


# ---- reloading the config -------------------------------------------------------------------


def replace_keeping_mtime(path: Path, text: str) -> None:
    """Change the file's content but not its mtime, so only SIGHUP can reveal the change."""
    mtime = path.stat().st_mtime_ns
    staged = path.with_suffix(".staged")
    staged.write_text(text)
    os.utime(staged, ns=(mtime, mtime))
    os.replace(staged, path)


def test_an_invalid_config_is_rejected_and_a_valid_one_applied(daemon: Daemon) -> None:
    daemon.wait_logged("tick", rollout="web")
    invalid = yaml.safe_dump(daemon.config, sort_keys=False).replace(
        "minRequests:", "minRequestz:", 1
    )
    daemon.write_config(invalid)  # noticed by the file watch

    rejected = daemon.wait_logged("new config rejected; the previous one keeps running")

    problems = rejected[0]["problems"]
    assert rejected[0]["level"] == "error"
    assert any(
        str(daemon.config_path) in p and "minRequestz" in p and "rollouts[0]" in p for p in problems
    ), problems
    assert daemon.metric('autocanary_config_reloads_total{outcome="rejected"}') == 1.0
    assert daemon.metric('autocanary_config_reloads_total{outcome="applied"}') is None
    assert daemon.process.is_running()
    assert daemon.get("/healthz").status_code == 200
    # The old config keeps running: both rollouts still tick.
    ticks = len(daemon.logged("tick", rollout="web"))
    broken = len(daemon.logged("tick failed", rollout="broken"))
    daemon.wait_logged("tick", count=ticks + 2, rollout="web")
    daemon.wait_logged("tick failed", count=broken + 2, rollout="broken")

    assert 'rollout="broken"' in daemon.get("/metrics").text

    # A valid change, the broken rollout removed, announced by SIGHUP alone.
    valid = {**daemon.config, "rollouts": daemon.config["rollouts"][1:]}
    replace_keeping_mtime(daemon.config_path, yaml.safe_dump(valid, sort_keys=False))
    os.kill(daemon.process.pid, signal.SIGHUP)

    reloaded = daemon.wait_logged("config reloaded")
    assert reloaded[0]["rollouts"] == ["web"]
    assert daemon.metric('autocanary_config_reloads_total{outcome="applied"}') == 1.0
    assert daemon.metric('autocanary_config_reloads_total{outcome="rejected"}') == 1.0
    # The removed rollout's job is gone: web goes on ticking, broken no longer does.
    ticks = len(daemon.logged("tick", rollout="web"))
    daemon.wait_logged("tick", count=ticks + 2, rollout="web")
    broken = len(daemon.logged("tick failed", rollout="broken"))
    daemon.wait_logged("tick", count=ticks + 4, rollout="web")
    assert len(daemon.logged("tick failed", rollout="broken")) == broken
    # Nor is it on /metrics any longer: a removed rollout's series go with it.
    assert 'rollout="broken"' not in daemon.get("/metrics").text
    assert 'rollout="web"' in daemon.get("/metrics").text
    assert daemon.process.is_running()


def test_a_config_whose_prometheus_token_file_is_missing_is_rejected(daemon: Daemon) -> None:
    daemon.wait_logged("tick", rollout="web")
    changed = {
        **daemon.config,
        "prometheus": {
            **daemon.config["prometheus"],
            "bearerTokenFile": str(daemon.config_path.parent / "no-such-token"),
        },
    }

    daemon.write_config(yaml.safe_dump(changed, sort_keys=False))

    rejected = daemon.wait_logged("new config rejected; the previous one keeps running")
    assert any("no-such-token" in p for p in rejected[0]["problems"]), rejected
    assert daemon.metric('autocanary_config_reloads_total{outcome="rejected"}') == 1.0
    assert daemon.process.is_running()
    ticks = len(daemon.logged("tick", rollout="web"))
    daemon.wait_logged("tick", count=ticks + 2, rollout="web")


# ---- SIGTERM --------------------------------------------------------------------------------


def test_sigterm_exits_zero_and_releases_the_lease(daemon: Daemon) -> None:
    wait_until(lambda: lease_holder(daemon) == IDENTITY, timeout=WAIT_S, what="the daemon holding")
    daemon.wait_logged("tick", rollout="web")

    daemon.process.stop(timeout=30)  # SIGTERM; SIGKILL only if it did not exit by then

    assert daemon.process.returncode == 0  # not -9: it exited on its own
    assert lease_holder(daemon) == ""
    events = [e.get("event") for e in daemon.logs()]
    assert "signal received" in events
    assert "lease released" in events
    assert events[-1] == "stopped"
