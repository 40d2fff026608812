"""A whole canary set-up on the local control plane, the stage of the rehearsal and e2e tests.

``CanaryStack`` puts the demo app (stable and canary Deployments of testpage
and their Service) into a namespace whose pods the pod runner runs (each on
its pod IP), spreads the probe's traffic over the Service's EndpointSlices
(the Service proxy, as kube-proxy), has Prometheus discover and scrape the
pods as kube-prometheus does (``kubernetes_sd_configs`` and a PodMonitor, at
``scrape_interval``) and scrape the probe, collects alerts (a webhook receiver
and Alertmanager) and runs the autocanary daemon as a real subprocess with a
generated config. Everything listens on loopback addresses.

The probe stays outside the cluster, a static scrape target: it plays the
users, who reach the Service from outside, and the test bed has no cluster DNS
to give a probe pod the Service's name.

With ``gateway=True`` the users come through a real Gateway API implementation
instead (Traefik, see :mod:`autocanary_testbed.gateway`): Services
``<app>-stable`` and ``<app>-canary`` select each track's pods and are served on
their cluster IPs by kube-proxy processes, Traefik runs as the Gateway's
controller in namespace ``<namespace>-gateway``, HTTPRoute ``<app>`` has one rule
whose backendRefs are the stable Service (weight 100) and the canary Service
(weight 0), the probe loads the Gateway's URL, and Prometheus scrapes Traefik
through its PodMonitor beside the app's pods.
"""

from __future__ import annotations

import json
import os
import re
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

from autocanary.adapters.kubernetes import DeploymentRecord, KubeClient
from autocanary.rollout import state as state_codec
from autocanary_testbed.apps import ProbeProcess, daemon_command, start_probe
from autocanary_testbed.controlplane import ControlPlane
from autocanary_testbed.errors import HarnessError
from autocanary_testbed.gateway import TraefikGateway, backend_ref, http_route
from autocanary_testbed.http_checks import http_ok
from autocanary_testbed.kubeproxy import KubeProxyProcess
from autocanary_testbed.monitoring import (
    AlertmanagerServer,
    PodMonitor,
    PrometheusServer,
    ScrapeTarget,
    prometheus_access,
)
from autocanary_testbed.podrunner import PodRunner
from autocanary_testbed.procs import ManagedProcess, ProcessGroup, free_port
from autocanary_testbed.receiver import AlertReceiver
from autocanary_testbed.waiting import wait_until

log = structlog.get_logger(__name__)

_API_TIMEOUT = (5.0, 10.0)


#: The port of the Gateway API backend Services. Their kube-proxy listens on the cluster IP
#: and this port: one above 1024 needs no privilege to bind.
BACKEND_PORT = 8080

#: Pod labels a PodMonitor copies onto the app's series (``podTargetLabels``).
POD_TARGET_LABELS = ("app", "track", "version")


@dataclass(frozen=True)
class StackSettings:
    """What the stage looks like: app, replicas, traffic and the rollout's pace."""

    namespace: str = "demo"
    app: str = "testpage"
    image: str = "autocanary/testpage"  # or autocanary/shopapp, the instrumented demo app
    replicas: int = 3
    stable_version: str = "v1"
    stable_env: Mapping[str, str] = field(default_factory=dict)  # e.g. a baseline error rate
    probe_rate: str = "40/s"
    # The probe follows the Service's EndpointSlices (service://), counting every failure
    # against its pod's version, instead of loading the proxy's URL.
    probe_follows_service: bool = False
    # Prometheus's scrape interval; kube-prometheus-stack's default is 30s.
    scrape_interval: str = "5s"
    # Pod labels the app's PodMonitor copies onto its series (podTargetLabels); () leaves
    # them only the pod's name (pod), namespace, container and job.
    pod_target_labels: Sequence[str] = POD_TARGET_LABELS
    # The analysis window is left to the daemon: four scrapes (20s at a 5s scrape).
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
    # Shipped files instead of the generated ones: the app's manifests (Deployments and
    # Service, e.g. deploy/example/testpage.yaml) and the daemon's config (only its
    # addresses are replaced, see shipped_config).
    manifests: Path | None = None
    config_file: Path | None = None
    # Another controller's objects instead of the two Deployments (e.g. an Argo Rollout,
    # see autocanary_testbed.argo): created as given, custom resources included.
    app_objects: Sequence[Mapping[str, Any]] = ()
    # The image ``release`` ships, ``{version}`` filled in (default: image:version).
    release_image: str | None = None
    # Blue/green: Service <app> selects the stable's version, Service <app>-preview the
    # release's (the daemon switches both), each followed by its own proxy and loaded by
    # its own probe (same target name, so the built-in queries see both); the rollout's
    # strategy is blueGreen with these holds.
    blue_green: bool = False
    preview_hold: str = "12s"
    window: str = "12s"
    # Gateway API: traffic through Traefik and HTTPRoute <app> (stable 100, canary 0) over
    # Services <app>-stable and <app>-canary; the probe loads the Gateway's URL.
    gateway: bool = False
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


def _add_env(deployment: dict[str, Any], env: Mapping[str, str]) -> None:
    """Set ``env`` on a shipped Deployment's first container (e.g. a baseline error rate)."""
    if not env:
        return
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    kept = [v for v in container.get("env") or [] if v.get("name") not in env]
    container["env"] = [*kept, *({"name": k, "value": v} for k, v in env.items())]


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
                            # The Service proxy drops a terminating pod at once (not after
                            # kube-proxy's iptables round), so a short drain suffices.
                            "args": ["testpage", "--port", "8080", "--drain-delay", "1s"],
                            "env": variables,
                            "ports": [{"containerPort": 8080, "name": "http"}],
                            "readinessProbe": {
                                "httpGet": {"path": "/healthz", "port": "http"},
                                "periodSeconds": 1,
                            },
                        }
                    ]
                },
            },
        },
    }


def app_service(
    app: str,
    *,
    version: str | None = None,
    track: str | None = None,
    name: str | None = None,
    port: int = 80,
) -> dict[str, Any]:
    """The Service in front of the app's pods: ``app`` only, or one ``version`` or ``track``.

    One version is blue/green's; one track (stable or canary) a Gateway API backend's.
    """
    selector = {"app": app}
    if version is not None:
        selector["version"] = version
    if track is not None:
        selector["track"] = track
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name or app, "labels": {"app": app}},
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": port, "targetPort": "http"}],
        },
    }


def shipped_config(text: str, *, prometheus: str, alertmanager: str, listen: str) -> str:
    """A shipped config's text with its addresses replaced for the test bed, and nothing else.

    The text is edited, never loaded and dumped again (a YAML 1.1 round trip would turn
    a sink's ``on:`` into ``true:``): Prometheus's URL, Alertmanager URLs and the
    daemon's listen address (a ``daemon:`` block holding only it is added when the
    file has none). Secret URLs read from the environment (``{env: ...}``) stay as
    they are: the daemon gets the variable instead.
    """
    text, found = re.subn(
        r"^(  url: )http://prometheus\S*", rf"\g<1>{prometheus}", text, flags=re.MULTILINE
    )
    if found != 1:
        raise HarnessError("the shipped config has no prometheus url to replace")
    text = re.sub(r"(url: )http://alertmanager\S*", rf"\g<1>{alertmanager}", text)
    text, found = re.subn(r"^(  listen: )\S+", rf"\g<1>{listen}", text, flags=re.MULTILINE)
    if not found:
        text += f"\ndaemon:\n  listen: {listen}\n"
    return text


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
        self._kube = KubeClient(self.api, identity="testbed")
        self.group = ProcessGroup(workdir / "logs")
        # The Service, as kube-proxy serves it: its own process following EndpointSlices.
        self.proxy = KubeProxyProcess(
            control_plane.kubeconfig_path,
            control_plane.pod_network,
            self.settings.namespace,
            self.settings.app,
            workdir / "logs",
            port_name="http",
        )
        self.preview_proxy = (
            KubeProxyProcess(
                control_plane.kubeconfig_path,
                control_plane.pod_network,
                self.settings.namespace,
                self.preview_service,
                workdir / "logs",
                port_name="http",
            )
            if self.settings.blue_green
            else None
        )
        self.preview_probe: ProbeProcess | None = None
        self.gateway = (
            TraefikGateway(
                self.api,
                server_url=control_plane.server_url,
                ca_cert=control_plane.ca_cert_path,
                network=control_plane.pod_network,
                namespace=f"{self.settings.namespace}-gateway",
                route_namespaces=(self.settings.namespace,),
                workdir=workdir / "gateway",
                create_namespace=control_plane.create_namespace,
                delete_namespace=control_plane.delete_namespace,
            )
            if self.settings.gateway
            else None
        )
        # The gateway's backend Services, each on its cluster IP as kube-proxy serves it.
        self.backend_proxies: dict[str, KubeProxyProcess] = {}
        self.receiver = AlertReceiver()
        self.alertmanager = AlertmanagerServer(workdir / "alertmanager")
        self.prometheus = PrometheusServer(
            workdir / "prometheus", scrape_interval=self.settings.scrape_interval
        )
        self.runner = PodRunner(
            self.api, control_plane.pod_network, self.settings.namespace, workdir / "logs" / "pods"
        )
        self.probe: ProbeProcess | None = None
        self.daemons: dict[str, ManagedProcess] = {}
        self.daemon_ports: dict[str, int] = {}
        self.config_path = workdir / "autocanary.yaml"
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

    @property
    def preview_service(self) -> str:
        """Blue/green's preview Service (the active one is named as the app)."""
        return f"{self.settings.app}-preview"

    @property
    def stable_service(self) -> str:
        """The Gateway API backend Service of the stable track."""
        return f"{self.settings.app}-stable"

    @property
    def canary_service(self) -> str:
        """The Gateway API backend Service of the canary track."""
        return f"{self.settings.app}-canary"

    @property
    def route_name(self) -> str:
        """The HTTPRoute sending the users to the stable and canary Services."""
        return self.settings.app

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self, *, daemon: bool = True) -> Self:
        """Bring up the app with traffic and monitoring, and the daemon unless ``daemon=False``."""
        s = self.settings
        self.cp.create_namespace(s.namespace, pod_runner=True)
        self._create_app()
        self.proxy.start()
        self._started.append(self.proxy.stop)
        if self.preview_proxy is not None:
            self.preview_proxy.start()
            self._started.append(self.preview_proxy.stop)
        self.receiver.start()
        self._started.append(self.receiver.stop)
        self.alertmanager.start()
        self._started.append(self.alertmanager.stop)
        self.runner.start()
        self._started.append(self.runner.stop)
        wait_until(
            lambda: len(self.proxy.backends) >= s.replicas,
            timeout=60,
            what=f"{s.replicas} stable pods in the Service's rotation",
        )
        target = f"{s.app}={self.proxy.url}/"
        extra: list[str] = []
        if self.gateway is not None:
            target = f"{s.app}={self._start_gateway()}/"
        elif s.probe_follows_service:
            # Outside the pod network, the probe dials each pod IP's loopback twin.
            network = self.cp.pod_network
            target = f"{s.app}=service://{s.namespace}/{s.app}/"
            extra = [
                "--kubeconfig",
                str(self.cp.kubeconfig_path),
                "--address-map",
                f"{network.pod_cidr}=127.{network.octet}.0.0/16",
            ]
        self.probe = start_probe(
            self.group,
            ["--target", target, "--rate", s.probe_rate, "--timeout", "2s", *extra],
        )
        if self.preview_proxy is not None:
            preview = f"{s.app}={self.preview_proxy.url}/"
            self.preview_probe = start_probe(
                self.group,
                ["--target", preview, "--rate", s.probe_rate, "--timeout", "2s"],
                name="probe-preview",
            )
        self.prometheus.targets = tuple(self._scrape_targets())
        self.prometheus.kubernetes = prometheus_access(
            self.api,
            self.cp.server_url,
            self.cp.ca_cert_path,
            self.cp.pod_network,
            self.workdir / "prometheus" / "token",
        )
        self.prometheus.pod_monitors = (self.pod_monitor,)
        if self.gateway is not None:
            self.prometheus.pod_monitors += (self.gateway.pod_monitor,)
        self.prometheus.start()
        self._prometheus_up = True
        self._started.append(self.stop_prometheus)
        self.prometheus.wait_for_target_up("probe", timeout=60)
        self.prometheus.wait_for_target_up(self.pod_monitor_job, timeout=60)
        if self.gateway is not None:
            self.prometheus.wait_for_target_up(self.gateway.pod_monitor_job, timeout=60)
        self.write_config()
        if daemon:
            self.start_daemon()
        return self

    def _create_app(self) -> None:
        s = self.settings
        objects: list[Any]
        if s.app_objects:
            objects = [json.loads(json.dumps(o)) for o in s.app_objects]
        elif s.manifests is not None:
            objects = [
                doc
                for doc in yaml.safe_load_all(s.manifests.read_text())
                if doc and doc.get("kind") in ("Deployment", "Service")
            ]
            # Both, as app_deployment does below: at rest the canary's template is the
            # stable's, or the daemon would take the difference for a release.
            for body in objects:
                if body["kind"] == "Deployment":
                    _add_env(body, s.stable_env)
        else:
            services = [app_service(s.app)]
            if s.blue_green:
                services = [
                    app_service(s.app, version=s.stable_version),
                    app_service(s.app, version=s.stable_version, name=self.preview_service),
                ]
            if s.gateway:
                services += [
                    app_service(s.app, track="stable", name=self.stable_service, port=BACKEND_PORT),
                    app_service(s.app, track="canary", name=self.canary_service, port=BACKEND_PORT),
                ]
            objects = [*services] + [
                app_deployment(
                    name,
                    s.app,
                    track,
                    s.stable_version,
                    replicas=replicas,
                    env=s.stable_env,
                    image=s.image,
                )
                for name, track, replicas in (
                    (self.stable_name, "stable", s.replicas),
                    (self.canary_name, "canary", 0),
                )
            ]
        for body in objects:
            body["metadata"]["namespace"] = s.namespace
            if body["kind"] == "Service":
                self.core.create_namespaced_service(
                    s.namespace, body, _request_timeout=_API_TIMEOUT
                )
            elif body["kind"] != "Deployment":
                group, version = body["apiVersion"].split("/")
                client.CustomObjectsApi(self.api).create_namespaced_custom_object(
                    group,
                    version,
                    s.namespace,
                    f"{body['kind'].lower()}s",
                    body,
                    _request_timeout=_API_TIMEOUT,
                )
            else:
                self.apps.create_namespaced_deployment(
                    s.namespace, body, _request_timeout=_API_TIMEOUT
                )

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
            # The runner is gone: nothing would end its pods before their grace period.
            self.apps.delete_collection_namespaced_deployment(
                self.namespace, _request_timeout=_API_TIMEOUT
            )
            self.core.delete_collection_namespaced_pod(
                self.namespace, grace_period_seconds=0, _request_timeout=_API_TIMEOUT
            )
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

    def _start_gateway(self) -> str:
        """Backend Services on their cluster IPs, Traefik, HTTPRoute; return the Gateway's URL."""
        if self.gateway is None:
            raise HarnessError("this stack has no gateway")
        for service in (self.stable_service, self.canary_service):
            read: Any = self.core.read_namespaced_service(
                service, self.namespace, _request_timeout=_API_TIMEOUT
            )
            proxy = KubeProxyProcess(
                self.cp.kubeconfig_path,
                self.cp.pod_network,
                self.namespace,
                service,
                self.workdir / "logs",
                port_name="http",
                cluster_ip=(read.spec.cluster_ip, int(read.spec.ports[0].port)),
            )
            proxy.start()
            self._started.append(proxy.stop)
            self.backend_proxies[service] = proxy
        # Stopped even if it fails half-way up (its stop is idempotent).
        self._started.append(self.gateway.stop)
        self.gateway.start()
        self.gateway.create_route(
            self.namespace,
            http_route(
                self.route_name,
                self.gateway.ref,
                [
                    {
                        "backendRefs": [
                            backend_ref(self.stable_service, 100, BACKEND_PORT),
                            backend_ref(self.canary_service, 0, BACKEND_PORT),
                        ]
                    }
                ],
            ),
        )
        url = self.gateway.url
        # Accepted is the API's word; the first answer through the gateway is Traefik's.
        wait_until(lambda: http_ok(f"{url}/"), timeout=60, what="the app answering via the gateway")
        return url

    def route(self) -> dict[str, Any]:
        """HTTPRoute ``<app>`` as the API server has it (gateway stacks only)."""
        if self.gateway is None:
            raise HarnessError("this stack has no gateway")
        return self.gateway.read_route(self.namespace, self.route_name)

    def route_weights(self, rule: int = 0) -> dict[str, int]:
        """The weight of each backend Service in the route's rule ``rule``, read from the API."""
        refs = self.route()["spec"]["rules"][rule].get("backendRefs") or []
        # An unset weight is 1, as the Gateway API defines it.
        return {ref["name"]: int(ref.get("weight", 1)) for ref in refs}

    def stop_prometheus(self) -> None:
        """Stop Prometheus (scenarios use this to take the evidence away mid-release)."""
        self._prometheus_up = False
        self.prometheus.stop()

    # ---- traffic and scraping --------------------------------------------------------------

    @property
    def pod_monitor(self) -> PodMonitor:
        """The app's PodMonitor: its pods' ``http`` port, pod labels copied onto series."""
        return PodMonitor(
            name=self.settings.app,
            namespace=self.namespace,
            selector={"app": self.settings.app},
            port="http",
            pod_target_labels=tuple(self.settings.pod_target_labels),
        )

    @property
    def pod_monitor_job(self) -> str:
        """The ``job`` label of the app's series (``<namespace>/<PodMonitor name>``)."""
        return f"{self.namespace}/{self.settings.app}"

    def _scrape_targets(self) -> list[ScrapeTarget]:
        targets = []
        for probe in (self.probe, self.preview_probe):
            if probe is not None:
                targets.append(ScrapeTarget("probe", probe.metrics_address))
        for name, port in self.daemon_ports.items():
            targets.append(ScrapeTarget("autocanary", f"127.0.0.1:{port}", {"instance_name": name}))
        return targets

    def _update_static_targets(self) -> None:
        if self._prometheus_up:
            try:
                self.prometheus.set_targets(self._scrape_targets())
            except HarnessError as e:
                log.warning("could not update Prometheus targets", error=str(e))

    # ---- the daemon ------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The daemon's config for this stack (the shipped one, addresses replaced, if given)."""
        s = self.settings
        if s.config_file is not None:
            loaded: dict[str, Any] = yaml.safe_load(self._shipped_text("127.0.0.1:0"))
            return loaded
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
                    **self._pace(),
                    "analysis": dict(s.analysis),
                }
            ],
        }

    def _pace(self) -> dict[str, Any]:
        s = self.settings
        if not s.blue_green:
            return {"steps": list(s.steps)}
        return {
            "strategy": "blueGreen",
            "blueGreen": {
                "activeService": s.app,
                "previewService": self.preview_service,
                "previewHold": s.preview_hold,
                "window": s.window,
            },
        }

    def _shipped_text(self, listen: str) -> str:
        path = self.settings.config_file
        if path is None:
            raise HarnessError("this stack runs no shipped config")
        return shipped_config(
            path.read_text(),
            prometheus=self.prometheus.url,
            alertmanager=self.alertmanager.url,
            listen=listen,
        )

    def write_config(self, config: Mapping[str, Any] | None = None) -> Path:
        """Write the daemon's config file (this stack's, or ``config``)."""
        if config is None and self.settings.config_file is not None:
            self.config_path.write_text(self._shipped_text("127.0.0.1:0"))
        else:
            text = yaml.safe_dump(dict(config or self.config()), sort_keys=False)
            self.config_path.write_text(text)
        return self.config_path

    def start_daemon(
        self,
        name: str = "daemon-a",
        *,
        env: Mapping[str, str] | None = None,
        config: Mapping[str, Any] | None = None,
        ready_timeout: float = 60.0,
    ) -> ManagedProcess:
        """Start ``autocanary run`` as a subprocess; return once it serves /healthz.

        ``env`` is added to its environment (e.g. a test-only fault hook);
        ``config`` replaces this stack's config (see :meth:`config`);
        ``ready_timeout`` bounds the wait for /healthz (a minute: on two cores
        shared by four test beds, the daemon's imports alone took over 30 s).
        """
        port = free_port()
        path = self.workdir / f"{name}.yaml"
        if config is None and self.settings.config_file is not None:
            path.write_text(self._shipped_text(f"127.0.0.1:{port}"))
        else:
            config = dict(config or self.config())
            config["daemon"] = {**config["daemon"], "listen": f"127.0.0.1:{port}"}
            path.write_text(yaml.safe_dump(config, sort_keys=False))
        process = ManagedProcess.start(
            name,
            daemon_command(path, self.cp.kubeconfig_path, name),
            log_dir=self.workdir / "logs",
            # A shipped config reads its Slack URL from here; the receiver stands in for Slack.
            env={"SLACK_WEBHOOK_URL": f"{self.receiver.url}/slack", **(env or {})},
        )
        self.daemons[name] = process
        self.daemon_ports[name] = port
        process.wait_ready(
            lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), ready_timeout, "serving /healthz"
        )
        self._update_static_targets()
        return process

    def stop_daemon(self, name: str = "daemon-a", *, kill: bool = False) -> None:
        """Stop a daemon: SIGTERM (graceful) or, with ``kill``, SIGKILL."""
        process = self.daemons.pop(name)
        self.daemon_ports.pop(name, None)
        self._update_static_targets()
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
            image
            or (self.settings.release_image or f"{self.settings.image}:{{version}}").format(
                version=version
            ),
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
            # Importing the Kubernetes client alone took 17s on a loaded 2-core machine.
            timeout=180,
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
        """The rollout's persisted state, read where the daemon reads it (idle when none yet)."""
        canary = DeploymentRecord.from_json(self.deployment(self.canary_name))
        raw = self._kube.read_state(canary).text
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
        """Pods in the Service proxy's rotation, by version label."""
        labels = {p.address: p.labels for p in self.runner.pods()}
        counts: dict[str, int] = {}
        for backend in self.proxy.backends:
            version = labels.get(backend, {}).get("version", "?")
            counts[version] = counts.get(version, 0) + 1
        return counts

    def sleep(self, seconds: float) -> None:
        """Let the release go on (a named pause reads better in scenarios)."""
        time.sleep(seconds)
