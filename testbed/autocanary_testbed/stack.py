"""A whole canary set-up on the local control plane, the stage of the rehearsal and e2e tests.

``CanaryStack`` puts the demo app (stable and canary Deployments of testpage)
into a namespace, runs a testpage process per pod (the pod runner), spreads
the probe's traffic over them (the Service proxy), has Prometheus scrape the
probe and the pods, collects alerts (a webhook receiver and Alertmanager) and
runs the autocanary daemon as a real subprocess with a generated config.
Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import structlog
import yaml
from kubernetes import client

from autocanary import state as state_codec
from autocanary_testbed.apps import ProbeProcess, start_probe
from autocanary_testbed.controlplane import ControlPlane
from autocanary_testbed.errors import HarnessError
from autocanary_testbed.http_checks import http_ok
from autocanary_testbed.monitoring import AlertmanagerServer, PrometheusServer, ScrapeTarget
from autocanary_testbed.podrunner import Endpoint, PodRunner
from autocanary_testbed.procs import ManagedProcess, ProcessGroup, free_port
from autocanary_testbed.receiver import AlertReceiver
from autocanary_testbed.serviceproxy import ServiceProxy
from autocanary_testbed.waiting import wait_until

log = structlog.get_logger(__name__)

_API_TIMEOUT = (5.0, 10.0)
#: Stands for 127.0.0.1 in the bed's EndpointSlices (a TEST-NET-3 address: never routed).
_SLICE_ADDRESS = "203.0.113.1"


@dataclass(frozen=True)
class StackSettings:
    """What the stage looks like: app, replicas, traffic and the rollout's pace."""

    namespace: str = "demo"
    app: str = "testpage"
    image: str = "autocanary/testpage"  # or autocanary/shopapp, the instrumented demo app
    scrape_interval: str = "1s"
    replicas: int = 3
    stable_version: str = "v1"
    stable_env: Mapping[str, str] = field(default_factory=dict)  # e.g. a baseline error rate
    probe_rate: str = "40/s"
    # The probe follows the Service's EndpointSlices (service://), counting every failure
    # against its pod's version, instead of loading the proxy's URL.
    probe_follows_service: bool = False
    interval: str = "4s"
    progress_deadline: str = "30s"
    steps: Sequence[Mapping[str, Any]] = (
        {"canary": 1, "hold": "8s"},
        {"canary": "50%", "hold": "8s"},
        {"canary": "100%", "hold": "4s"},
    )
    analysis: Mapping[str, Any] = field(
        default_factory=lambda: {
            "warmup": "1s",
            "minRequests": 10,
            "failureLimit": 0,
            "inconclusiveLimit": 2,
            "inconclusivePolicy": "rollback",
            "checks": [
                {"name": "error-rate", "template": "error-rate", "max": "2%"},
                {"name": "latency-p95", "template": "latency", "quantile": 0.95, "max": "250ms"},
            ],
        }
    )
    leader_election: Mapping[str, Any] = field(
        default_factory=lambda: {
            "enabled": True,
            "leaseDuration": "6s",
            "renewDeadline": "4s",
            "retryPeriod": "1s",
        }
    )


def app_labels(app: str, track: str, version: str) -> dict[str, str]:
    """The pod labels of the demo app: the Service selects ``app`` only."""
    return {"app": app, "track": track, "version": version}


def app_deployment(
    name: str,
    app: str,
    track: str,
    version: str,
    *,
    replicas: int,
    env: Mapping[str, str] | None = None,
    image: str = "autocanary/testpage",
) -> dict[str, Any]:
    """An app Deployment as an SRE would write it (VERSION from the version label)."""
    variables: list[dict[str, Any]] = [
        {"name": "VERSION", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['version']"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        *({"name": k, "value": v} for k, v in (env or {}).items()),
    ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app, "track": track}},
            "template": {
                "metadata": {"labels": app_labels(app, track, version)},
                "spec": {
                    "containers": [
                        {
                            "name": image.rsplit("/", 1)[-1],
                            "image": f"{image}:{version}",
                            "args": ["testpage", "--port", "8080"],
                            "env": variables,
                            "ports": [{"containerPort": 8080, "name": "http"}],
                            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
                        }
                    ]
                },
            },
        },
    }


class CanaryStack:
    """The demo app, its traffic, Prometheus, alert receivers and the daemon on one cluster."""

    def __init__(
        self, control_plane: ControlPlane, workdir: Path, settings: StackSettings | None = None
    ) -> None:
        """Prepare; :meth:`start` brings everything up."""
        self.cp = control_plane
        self.workdir = workdir
        self.settings = settings or StackSettings()
        self.api = control_plane.api_client()
        self.apps = client.AppsV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.group = ProcessGroup(workdir / "logs")
        self.proxy = ServiceProxy()
        self.receiver = AlertReceiver()
        self.alertmanager = AlertmanagerServer(workdir / "alertmanager")
        self.prometheus = PrometheusServer(
            workdir / "prometheus", scrape_interval=self.settings.scrape_interval
        )
        self.runner = PodRunner(
            self.api,
            self.settings.namespace,
            f"app={self.settings.app}",
            workdir / "logs" / "pods",
            on_endpoints=self._endpoints_changed,
        )
        self.probe: ProbeProcess | None = None
        self.daemons: dict[str, ManagedProcess] = {}
        self.daemon_ports: dict[str, int] = {}
        self.config_path = workdir / "autocanary.yaml"
        self._endpoints: list[Endpoint] = []
        self._started: list[Callable[[], None]] = []
        self._prometheus_up = False

    # ---- names -----------------------------------------------------------------------------

    @property
    def namespace(self) -> str:
        """The demo namespace."""
        return self.settings.namespace

    @property
    def stable_name(self) -> str:
        """The stable Deployment."""
        return self.settings.app

    @property
    def canary_name(self) -> str:
        """The canary Deployment."""
        return f"{self.settings.app}-canary"

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self, *, daemon: bool = True) -> Self:
        """Bring up the app with traffic and monitoring, and the daemon unless ``daemon=False``."""
        s = self.settings
        self.cp.create_namespace(s.namespace)
        for name, track, replicas in (
            (self.stable_name, "stable", s.replicas),
            (self.canary_name, "canary", 0),
        ):
            body: Any = app_deployment(
                name,
                s.app,
                track,
                s.stable_version,
                replicas=replicas,
                env=s.stable_env,
                image=s.image,
            )
            self.apps.create_namespaced_deployment(s.namespace, body, _request_timeout=_API_TIMEOUT)
        self.proxy.start()
        self._started.append(self.proxy.stop)
        self.receiver.start()
        self._started.append(self.receiver.stop)
        self.alertmanager.start()
        self._started.append(self.alertmanager.stop)
        self.runner.start()
        self._started.append(self.runner.stop)
        wait_until(
            lambda: len(self.runner.endpoints()) >= s.replicas,
            timeout=60,
            what=f"{s.replicas} stable pods serving",
        )
        target = f"{s.app}={self.proxy.url}/"
        extra: list[str] = []
        if s.probe_follows_service:
            target = f"{s.app}=service://{s.namespace}/{s.app}/"
            extra = [
                "--kubeconfig",
                str(self.cp.kubeconfig_path),
                "--address-map",
                f"{_SLICE_ADDRESS}/32=127.0.0.1/32",
            ]
        self.probe = start_probe(
            self.group,
            ["--target", target, "--rate", s.probe_rate, "--timeout", "2s", *extra],
        )
        self.prometheus.targets = tuple(self._scrape_targets())
        self.prometheus.start()
        self._prometheus_up = True
        self._started.append(self.stop_prometheus)
        self.prometheus.wait_for_target_up("probe", timeout=60)
        self.write_config()
        if daemon:
            self.start_daemon()
        return self

    def stop(self) -> None:
        """Stop everything this stack started, newest first; the namespace is deleted."""
        for name in list(self.daemons):
            self.stop_daemon(name)
        self.group.stop()
        for stop in reversed(self._started):
            try:
                stop()
            except Exception as e:  # noqa: BLE001 -- keep tearing down the rest
                log.warning("teardown step failed", error=str(e))
        self._started.clear()
        try:
            self.cp.delete_namespace(self.namespace)
        finally:
            self.api.close()  # type: ignore[no-untyped-call]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop_prometheus(self) -> None:
        """Stop Prometheus (scenarios use this to take the evidence away mid-release)."""
        self._prometheus_up = False
        self.prometheus.stop()

    # ---- traffic and scraping --------------------------------------------------------------

    def _scrape_targets(self) -> list[ScrapeTarget]:
        targets = []
        if self.probe is not None:
            targets.append(ScrapeTarget("probe", self.probe.metrics_address))
        for endpoint in self._endpoints:
            # The pod's version label on its series, as a PodMonitor's podTargetLabels does.
            labels = {"namespace": endpoint.namespace, "pod": endpoint.pod}
            if "version" in endpoint.labels:
                labels["version"] = endpoint.labels["version"]
            targets.append(ScrapeTarget(self.settings.app, endpoint.address, labels))
        for name, port in self.daemon_ports.items():
            targets.append(ScrapeTarget("autocanary", f"127.0.0.1:{port}", {"instance_name": name}))
        return targets

    def _endpoints_changed(self, endpoints: list[Endpoint]) -> None:
        self._endpoints = endpoints
        self.proxy.set_backends([e.address for e in endpoints])
        if self.settings.probe_follows_service:
            self._write_endpoint_slices(endpoints)
        if self._prometheus_up:
            try:
                self.prometheus.set_targets(self._scrape_targets())
            except HarnessError as e:
                log.warning("could not update Prometheus targets", error=str(e))

    def _write_endpoint_slices(self, endpoints: list[Endpoint]) -> None:
        """The Service's EndpointSlices for the live pods, as the endpointslice controller would.

        Pods share 127.0.0.1 on ports of their own, so each gets a slice (ports are per
        slice); a slice names its pod in ``targetRef``, which is what the probe reads.
        The API server refuses loopback addresses in slices: they say
        ``_SLICE_ADDRESS``, which the probe dials as 127.0.0.1 (``--address-map``).
        """
        s = self.settings
        labels = {
            "kubernetes.io/service-name": s.app,
            "endpointslice.kubernetes.io/managed-by": "autocanary-testbed",
        }
        wanted: dict[str, Any] = {}
        for e in endpoints:
            port = e.address.rpartition(":")[2]
            name = f"{s.app}-{e.pod}"
            wanted[name] = {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": name, "labels": labels},
                "addressType": "IPv4",
                "endpoints": [
                    {
                        "addresses": [_SLICE_ADDRESS],
                        "conditions": {"ready": True},
                        "targetRef": {"kind": "Pod", "name": e.pod, "namespace": e.namespace},
                    }
                ],
                "ports": [{"name": "http", "port": int(port), "protocol": "TCP"}],
            }
        discovery = client.DiscoveryV1Api(self.api)
        try:
            existing = discovery.list_namespaced_endpoint_slice(
                s.namespace,
                label_selector="endpointslice.kubernetes.io/managed-by=autocanary-testbed",
                _request_timeout=_API_TIMEOUT,
            )
            have = {str(item.metadata.name) for item in existing.items if item.metadata}
            for name in have - set(wanted):
                discovery.delete_namespaced_endpoint_slice(
                    name, s.namespace, _request_timeout=_API_TIMEOUT
                )
            for name, body in wanted.items():
                if name not in have:
                    discovery.create_namespaced_endpoint_slice(
                        s.namespace, body, _request_timeout=_API_TIMEOUT
                    )
        except client.ApiException as e:
            log.warning("could not write the EndpointSlices", error=str(e))

    # ---- the daemon ------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The daemon's config for this stack."""
        s = self.settings
        return {
            "prometheus": {"url": self.prometheus.url, "timeout": "3s"},
            "alerts": {
                "sinks": [
                    {
                        "name": "oncall",
                        "type": "webhook",
                        "url": f"{self.receiver.url}/oncall",
                        "on": [
                            "releaseDetected",
                            "stepAdvanced",
                            "analysisFailed",
                            "paused",
                            "progressDeadlineExceeded",
                            "rolledBack",
                            "promoted",
                        ],
                        "timeout": "2s",
                    },
                    {
                        "name": "alertmanager",
                        "type": "alertmanager",
                        "url": self.alertmanager.url,
                        "on": ["rolledBack", "paused", "promoted"],
                        "timeout": "2s",
                    },
                ]
            },
            "daemon": {
                "listen": "127.0.0.1:0",
                "logFormat": "json",
                "leaderElection": {**s.leader_election, "namespace": s.namespace},
            },
            "rollouts": [
                {
                    "name": s.app,
                    "namespace": s.namespace,
                    "stable": self.stable_name,
                    "interval": s.interval,
                    "progressDeadline": s.progress_deadline,
                    "steps": list(s.steps),
                    "analysis": dict(s.analysis),
                }
            ],
        }

    def write_config(self, config: Mapping[str, Any] | None = None) -> Path:
        """Write the daemon's config file (this stack's, or ``config``)."""
        self.config_path.write_text(yaml.safe_dump(dict(config or self.config()), sort_keys=False))
        return self.config_path

    def start_daemon(
        self,
        name: str = "daemon-a",
        *,
        env: Mapping[str, str] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> ManagedProcess:
        """Start ``autocanary run`` as a subprocess; return once it serves /healthz.

        ``env`` is added to its environment (e.g. a test-only fault hook);
        ``config`` replaces this stack's config (see :meth:`config`).
        """
        port = free_port()
        config = dict(config or self.config())
        config["daemon"] = {**config["daemon"], "listen": f"127.0.0.1:{port}"}
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        process = ManagedProcess.start(
            name,
            [
                sys.executable,
                "-m",
                "autocanary",
                "run",
                "--config",
                str(path),
                "--kubeconfig",
                str(self.cp.kubeconfig_path),
                "--identity",
                name,
            ],
            log_dir=self.workdir / "logs",
            env=env,
        )
        self.daemons[name] = process
        self.daemon_ports[name] = port
        process.wait_ready(
            lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), 30, "serving /healthz"
        )
        return process

    def stop_daemon(self, name: str = "daemon-a", *, kill: bool = False) -> None:
        """Stop a daemon: SIGTERM (graceful) or, with ``kill``, SIGKILL."""
        process = self.daemons.pop(name)
        self.daemon_ports.pop(name, None)
        if kill:
            os.killpg(process.pid, signal.SIGKILL)
        process.stop()

    # ---- acting and observing --------------------------------------------------------------

    def release(
        self, version: str, env: Mapping[str, str] | None = None, image: str | None = None
    ) -> None:
        """Ship ``version`` to the canary with ``autocanary release`` (faults via ``env``)."""
        argv = [
            "release",
            self.settings.app,
            "--config",
            str(self.config_path),
            "--kubeconfig",
            str(self.cp.kubeconfig_path),
            "--image",
            image or f"{self.settings.image}:{version}",
            "--version",
            version,
        ]
        for key, value in (env or {}).items():
            argv += ["--env", f"{key}={value}"]
        self.cli(*argv)

    def cli(self, *argv: str) -> str:
        """Run an ``autocanary`` CLI command; return its output, HarnessError on failure."""
        done = subprocess.run(  # noqa: S603 -- our own CLI, arguments built here
            [sys.executable, "-m", "autocanary", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise HarnessError(f"autocanary {' '.join(argv)} failed: {done.stderr.strip()}")
        return done.stdout

    def deployment(self, name: str) -> dict[str, Any]:
        """A Deployment as JSON."""
        response: Any = self.apps.read_namespaced_deployment(
            name, self.namespace, _preload_content=False, _request_timeout=_API_TIMEOUT
        )
        data: dict[str, Any] = json.loads(response.data)
        return data

    def state(self) -> state_codec.RolloutState:
        """The rollout's persisted state (idle when there is none yet)."""
        raw = (self.deployment(self.canary_name)["metadata"].get("annotations") or {}).get(
            state_codec.STATE_ANNOTATION
        )
        return state_codec.loads(raw) if raw else state_codec.RolloutState()

    def wait_for(
        self,
        predicate: Callable[[state_codec.RolloutState], bool],
        timeout: float,
        what: str,
        on_poll: Callable[[state_codec.RolloutState], None] | None = None,
    ) -> state_codec.RolloutState:
        """Wait until the persisted state satisfies ``predicate``; return it."""
        seen: list[state_codec.RolloutState] = []

        def check() -> bool:
            current = self.state()
            seen[:] = [current]
            if on_poll is not None:
                on_poll(current)
            return predicate(current)

        try:
            wait_until(check, timeout=timeout, what=what)
        except HarnessError as e:
            last = seen[0] if seen else None
            raise HarnessError(f"{e}; last state: {last}") from e
        return seen[0]

    def wait_settled(
        self, revision_hint: str = "", timeout: float = 180
    ) -> state_codec.RolloutState:
        """Wait until the release reached succeeded or rolledBack."""
        return self.wait_for(
            lambda st: st.phase in ("succeeded", "rolledBack") and st.revision != revision_hint,
            timeout,
            "a release settled (succeeded or rolledBack)",
        )

    def events(self) -> list[dict[str, Any]]:
        """Events recorded on the canary Deployment, oldest first."""
        response: Any = self.core.list_namespaced_event(
            self.namespace,
            field_selector=f"involvedObject.name={self.canary_name}",
            _preload_content=False,
            _request_timeout=_API_TIMEOUT,
        )
        items: list[dict[str, Any]] = json.loads(response.data)["items"]
        # resourceVersion orders creation; timestamps only have whole seconds.
        return sorted(items, key=lambda e: int(e["metadata"]["resourceVersion"]))

    def alertmanager_alerts(self) -> list[dict[str, Any]]:
        """Alerts Alertmanager currently holds."""
        with httpx.Client(trust_env=False, timeout=5) as http:
            response = http.get(f"{self.alertmanager.url}/api/v2/alerts")
            response.raise_for_status()
            alerts: list[dict[str, Any]] = response.json()
            return alerts

    def replicas(self) -> tuple[int, int]:
        """(stable, canary) spec replicas."""
        stable = self.deployment(self.stable_name)["spec"]["replicas"]
        canary = self.deployment(self.canary_name)["spec"]["replicas"]
        return int(stable), int(canary)

    def served_versions(self) -> dict[str, int]:
        """Live pod processes by version label."""
        counts: dict[str, int] = {}
        for endpoint in self.runner.endpoints():
            version = endpoint.labels.get("version", "?")
            counts[version] = counts.get(version, 0) + 1
        return counts

    def sleep(self, seconds: float) -> None:
        """Let the release go on (a named pause reads better in scenarios)."""
        time.sleep(seconds)
