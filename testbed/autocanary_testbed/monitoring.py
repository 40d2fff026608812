"""Prometheus and Alertmanager, run on 127.0.0.1 for tests.

``PrometheusServer`` scrapes the ``ScrapeTarget``s it is given (changeable at run
time through ``set_targets``, which reloads the config); it can also start on an
existing TSDB directory, e.g. one filled by ``promtool tsdb create-blocks-from
openmetrics`` for a backtest. Given ``PodMonitor``s and a ``KubernetesAccess``
it discovers pods as kube-prometheus does: ``kubernetes_sd_configs`` against
the API server with a ServiceAccount's token and RBAC (``prometheus_access``),
and the relabelling the Prometheus Operator generates for a PodMonitor.
Debian's Prometheus (2.42) is built without ``kubernetes_sd_configs``, so a
Prometheus with pod monitors is the one ``hack/prometheus/build.sh`` builds
(Prometheus 3); one with static targets only is Debian's.
``AlertmanagerServer`` (Debian's) runs with clustering off so it listens on
nothing but its 127.0.0.1 web port.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import structlog
import yaml
from kubernetes import client
from kubernetes.client import ApiException

from autocanary_testbed.binaries import find_prometheus
from autocanary_testbed.errors import HarnessError
from autocanary_testbed.http_checks import http_ready
from autocanary_testbed.network import PodNetwork
from autocanary_testbed.procs import ManagedProcess, free_port

log = structlog.get_logger(__name__)

_INSTALL_HINT = "apt-get install prometheus prometheus-alertmanager"
_READY_TIMEOUT_S = 60.0
_HTTP_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class PodMonitor:
    """Pods to scrape, as a Prometheus Operator ``PodMonitor`` selects and labels them.

    Pods in ``namespace`` whose labels include ``selector``, on their container
    port named ``port`` (pods declaring no such port are not scraped), at
    ``path``. Series get ``namespace``, ``pod``, ``container``, ``endpoint`` and
    ``job`` (``<namespace>/<name>``), plus each of ``pod_target_labels`` the pod
    carries; a label the app exposes itself under one of these names is kept as
    ``exported_<name>`` (``honorLabels: false``, the operator's default).
    """

    name: str
    namespace: str
    selector: Mapping[str, str]
    port: str
    path: str = "/metrics"
    pod_target_labels: Sequence[str] = ()
    interval: str | None = None


@dataclass(frozen=True)
class KubernetesAccess:
    """How Prometheus reaches the API server, and how it reaches the pods it finds there.

    ``server_url`` is the API server (on 127.0.0.1), ``ca_cert`` the CA its
    certificate is checked against, ``token_file`` a ServiceAccount token, as
    a Prometheus pod has them mounted; ``network`` translates pod IPs to the
    loopback addresses the pods listen on.
    """

    server_url: str
    ca_cert: Path
    token_file: Path
    network: PodNetwork


@dataclass(frozen=True)
class ScrapeTarget:
    """One ``host:port`` for Prometheus to scrape under ``job``, with extra target labels.

    A ``__metrics_path__`` label changes the path from the default ``/metrics``.
    """

    job: str
    address: str
    labels: Mapping[str, str] = field(default_factory=dict)


def find_tool(name: str) -> Path:
    """Path of a Prometheus-family executable (``prometheus``, ``promtool``, ...).

    Raises HarnessError naming the Debian packages when it is not installed.
    """
    found = shutil.which(name) or shutil.which(name, path="/usr/bin")
    if found is None:
        raise HarnessError(f"{name} not found on PATH or in /usr/bin: {_INSTALL_HINT}")
    return Path(found)


class _LocalServer:
    """One server process on a free 127.0.0.1 port: start, readiness, stop, context manager."""

    _name: str

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._proc: ManagedProcess | None = None
        self._port: int | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``; only valid while started."""
        if self._port is None:
            raise HarnessError(f"{self._name} not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def process(self) -> ManagedProcess:
        """The running server process."""
        if self._proc is None:
            raise HarnessError(f"{self._name} not started")
        return self._proc

    def start(self) -> Self:
        """Start the server and wait until it reports ready on ``/-/ready``; return self."""
        if self._proc is not None:
            raise HarnessError(f"{self._name} already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._port = free_port()
        self._proc = ManagedProcess.start(
            self._name, self._argv(f"127.0.0.1:{self._port}"), log_dir=self.workdir / "logs"
        )
        try:
            self._proc.wait_ready(http_ready(f"{self.url}/-/ready"), _READY_TIMEOUT_S, "ready")
        except BaseException:
            self.stop()
            raise
        log.debug("server ready", name=self._name, url=self.url)
        return self

    def stop(self) -> None:
        """Stop the server process (by PID). Idempotent; the work directory stays."""
        if self._proc is not None:
            proc, self._proc = self._proc, None
            proc.stop(_STOP_TIMEOUT_S)

    def _argv(self, listen: str) -> list[str]:
        raise NotImplementedError

    def __enter__(self) -> Self:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class PrometheusServer(_LocalServer):
    """A Prometheus scraping ``targets`` with its data in ``workdir`` (or ``storage_path``)."""

    _name = "prometheus"

    def __init__(
        self,
        workdir: Path,
        targets: Iterable[ScrapeTarget] = (),
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        rule_files: Sequence[Path] = (),
        *,
        alertmanagers: Sequence[str] = (),
        storage_path: Path | None = None,
        retention: str | None = None,
        pod_monitors: Sequence[PodMonitor] = (),
        kubernetes: KubernetesAccess | None = None,
    ) -> None:
        """Configure, without starting.

        ``alertmanagers`` are ``host:port`` addresses alerts from ``rule_files`` go to.
        ``storage_path`` may hold existing TSDB blocks; give a ``retention`` (e.g.
        ``"10y"``) long enough to keep them, since older blocks are deleted on start.
        """
        super().__init__(workdir)
        self.targets = tuple(targets)
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.rule_files = tuple(rule_files)
        self.alertmanagers = tuple(alertmanagers)
        self.storage_path = storage_path or workdir / "data"
        self.retention = retention
        self.config_path = workdir / "prometheus.yml"
        if pod_monitors and kubernetes is None:
            raise HarnessError(
                "pod monitors need kubernetes access (API server, CA, token and pod network)"
            )
        self.pod_monitors = tuple(pod_monitors)
        self.kubernetes = kubernetes
        # Checked now, so a missing install fails before anything starts.
        self._binary()

    def _binary(self) -> Path:
        """Prometheus 3 built with Kubernetes discovery for pod monitors, else Debian's."""
        return find_prometheus() if self.pod_monitors else find_tool("prometheus")

    def set_targets(self, targets: Iterable[ScrapeTarget]) -> None:
        """Replace the scrape targets and reload the running Prometheus.

        Raises HarnessError if Prometheus rejects the new configuration.
        """
        self.targets = tuple(targets)
        self._write_config()
        try:
            with httpx.Client(trust_env=False, timeout=_HTTP_TIMEOUT_S) as http:
                response = http.post(f"{self.url}/-/reload")
        except httpx.HTTPError as e:
            raise HarnessError(f"prometheus reload failed: {e}") from e
        if not response.is_success:
            raise HarnessError(f"prometheus rejected the new config: {response.text.strip()}")

    def wait_for_target_up(self, job: str, timeout: float = 30.0) -> None:
        """Wait until every target of ``job`` (at least one) was scraped successfully.

        Raises HarnessError with the targets' last errors when that does not happen in time.
        """
        last_errors: list[str] = []

        def all_up() -> bool:
            active = [t for t in self._active_targets() if t["labels"].get("job") == job]
            last_errors[:] = [
                f"{t['scrapeUrl']}: {t.get('lastError') or t['health']}" for t in active
            ]
            return bool(active) and all(t["health"] == "up" for t in active)

        try:
            self.process.wait_ready(all_up, timeout, f"scraping job {job!r}")
        except HarnessError as e:
            raise HarnessError(f"{e}\ntargets of job {job!r}: {last_errors or 'none'}") from e

    def _active_targets(self) -> list[dict[str, Any]]:
        try:
            with httpx.Client(trust_env=False, timeout=_HTTP_TIMEOUT_S) as http:
                response = http.get(f"{self.url}/api/v1/targets", params={"state": "active"})
                response.raise_for_status()
        except httpx.HTTPError as e:
            raise HarnessError(f"prometheus targets API failed: {e}") from e
        targets: list[dict[str, Any]] = response.json()["data"]["activeTargets"]
        return targets

    def _argv(self, listen: str) -> list[str]:
        self._write_config()
        argv = [
            str(self._binary()),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.storage_path}",
            f"--web.listen-address={listen}",
            # Lets set_targets reload the config through POST /-/reload.
            "--web.enable-lifecycle",
        ]
        if self.retention is not None:
            argv.append(f"--storage.tsdb.retention.time={self.retention}")
        return argv

    def _write_config(self) -> None:
        jobs: dict[str, list[dict[str, Any]]] = {}
        for target in self.targets:
            jobs.setdefault(target.job, []).append(
                {"targets": [target.address], "labels": dict(target.labels)}
            )
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
            },
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": statics} for job, statics in jobs.items()
            ]
            + [self._pod_monitor_job(m) for m in self.pod_monitors],
        }
        if self.alertmanagers:
            config["alerting"] = {
                "alertmanagers": [{"static_configs": [{"targets": list(self.alertmanagers)}]}]
            }
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def _pod_monitor_job(self, monitor: PodMonitor) -> dict[str, Any]:
        """The scrape job the Prometheus Operator would generate for ``monitor``."""
        if self.kubernetes is None:
            raise HarnessError("pod monitors need kubernetes access")
        meta = "__meta_kubernetes_pod_"
        names = sorted(monitor.selector)
        relabel: list[dict[str, Any]] = [
            # Pods that have finished are no longer scraped.
            {"action": "drop", "source_labels": [f"{meta}phase"], "regex": "(Failed|Succeeded)"},
            {
                "action": "keep",
                "source_labels": [
                    *(f"{meta}label_{_label_name(n)}" for n in names),
                    *(f"{meta}labelpresent_{_label_name(n)}" for n in names),
                ],
                "regex": ";".join(
                    [*(re.escape(monitor.selector[n]) for n in names), *("true" for _ in names)]
                ),
            },
            {
                "action": "keep",
                "source_labels": [f"{meta}container_port_name"],
                "regex": monitor.port,
            },
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": [f"{meta}container_name"], "target_label": "container"},
            {"source_labels": [f"{meta}name"], "target_label": "pod"},
            *(
                {
                    "source_labels": [f"{meta}label_{_label_name(label)}"],
                    "regex": "(.+)",
                    "target_label": _label_name(label),
                    "replacement": "${1}",
                }
                for label in monitor.pod_target_labels
            ),
            {"target_label": "job", "replacement": f"{monitor.namespace}/{monitor.name}"},
            {"target_label": "endpoint", "replacement": monitor.port},
            # Test-bed plumbing, not part of what the Operator generates: the API
            # server refuses loopback pod IPs, so pods have 10.<n> IPs and listen
            # on their 127.<n> twins (see network). Rewrite the address to the
            # twin, then keep only loopback addresses, so Prometheus never dials
            # anything but 127.0.0.0/8.
            self.kubernetes.network.relabel_to_host("__address__", "__address__"),
            {"action": "keep", "source_labels": ["__address__"], "regex": r"127\..+"},
        ]
        access = self.kubernetes
        job: dict[str, Any] = {
            "job_name": f"podMonitor/{monitor.namespace}/{monitor.name}/0",
            "honor_labels": False,
            "metrics_path": monitor.path,
            "kubernetes_sd_configs": [
                {
                    "role": "pod",
                    "namespaces": {"names": [monitor.namespace]},
                    # In a cluster these come from the pod's mounted ServiceAccount.
                    "api_server": access.server_url,
                    "tls_config": {"ca_file": str(access.ca_cert)},
                    "authorization": {"credentials_file": str(access.token_file)},
                }
            ],
            "relabel_configs": relabel,
        }
        if monitor.interval is not None:
            job["scrape_interval"] = monitor.interval
        return job


def _label_name(name: str) -> str:
    """A label name as service discovery spells it (``a.b/c`` is ``a_b_c``)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


#: What a Prometheus ServiceAccount may do, as kube-prometheus grants it: read
#: what service discovery watches (its Role in each monitored namespace, here
#: cluster-wide as kube-prometheus-stack has it), and its ClusterRole's
#: ``nodes/metrics`` and ``/metrics``. Nothing else: no writes, no secrets, no
#: impersonation.
PROMETHEUS_RULES: tuple[dict[str, Any], ...] = (
    {
        "apiGroups": [""],
        "resources": ["pods", "services", "endpoints"],
        "verbs": ["get", "list", "watch"],
    },
    {
        "apiGroups": ["discovery.k8s.io"],
        "resources": ["endpointslices"],
        "verbs": ["get", "list", "watch"],
    },
    {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
    {"nonResourceURLs": ["/metrics", "/metrics/slis"], "verbs": ["get"]},
)
_PROMETHEUS_NAMESPACE = "monitoring"
_PROMETHEUS_ACCOUNT = "prometheus"
_TOKEN_SECONDS = 24 * 3600


def prometheus_access(
    api_client: client.ApiClient, server_url: str, ca_cert: Path, network: PodNetwork, path: Path
) -> KubernetesAccess:
    """A ServiceAccount for Prometheus with kube-prometheus's RBAC, and a token of it.

    Creates (or reuses) ``monitoring/prometheus``, a ClusterRole with
    :data:`PROMETHEUS_RULES` bound to it, and writes a token from the
    TokenRequest API to ``path`` (as a pod's mounted ServiceAccount token).
    """
    # The client's typed models are left out: these bodies are the manifests as written.
    core: Any = client.CoreV1Api(api_client)
    rbac: Any = client.RbacAuthorizationV1Api(api_client)
    name = f"testbed-{_PROMETHEUS_ACCOUNT}"
    creations: tuple[Callable[[], object], ...] = (
        lambda: core.create_namespace(
            {"metadata": {"name": _PROMETHEUS_NAMESPACE}}, _request_timeout=_HTTP_TIMEOUT_S
        ),
        lambda: core.create_namespaced_service_account(
            _PROMETHEUS_NAMESPACE,
            {"metadata": {"name": _PROMETHEUS_ACCOUNT}},
            _request_timeout=_HTTP_TIMEOUT_S,
        ),
        lambda: rbac.create_cluster_role(
            {"metadata": {"name": name}, "rules": list(PROMETHEUS_RULES)},
            _request_timeout=_HTTP_TIMEOUT_S,
        ),
        lambda: rbac.create_cluster_role_binding(
            {
                "metadata": {"name": name},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": name,
                },
                "subjects": [
                    {
                        "kind": "ServiceAccount",
                        "name": _PROMETHEUS_ACCOUNT,
                        "namespace": _PROMETHEUS_NAMESPACE,
                    }
                ],
            },
            _request_timeout=_HTTP_TIMEOUT_S,
        ),
    )
    for create in creations:
        try:
            create()
        except ApiException as e:
            if e.status != 409:  # already there, from an earlier Prometheus of this cluster
                raise HarnessError(f"cannot set up Prometheus's ServiceAccount: {e}") from e
    token = core.create_namespaced_service_account_token(
        _PROMETHEUS_ACCOUNT,
        _PROMETHEUS_NAMESPACE,
        {"spec": {"expirationSeconds": _TOKEN_SECONDS}},
        _request_timeout=_HTTP_TIMEOUT_S,
    ).status.token
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    path.touch(mode=0o600)  # a credential: readable by its owner only, from the start
    path.write_text(token)
    return KubernetesAccess(server_url, ca_cert, path, network)


class AlertmanagerServer(_LocalServer):
    """An Alertmanager routing every alert to one webhook, or to nowhere."""

    _name = "alertmanager"

    def __init__(self, workdir: Path, webhook_url: str | None = None) -> None:
        """Configure, without starting; ``webhook_url`` receives every notification if given."""
        super().__init__(workdir)
        self._binary = find_tool("prometheus-alertmanager")
        self.webhook_url = webhook_url
        self.config_path = workdir / "alertmanager.yml"

    def _argv(self, listen: str) -> list[str]:
        receiver: dict[str, Any] = {"name": "default"}
        if self.webhook_url is not None:
            receiver["webhook_configs"] = [{"url": self.webhook_url, "send_resolved": True}]
        config = {
            # Short waits so a test sees a notification within seconds, not minutes.
            "route": {
                "receiver": "default",
                "group_wait": "1s",
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            "receivers": [receiver],
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        return [
            str(self._binary),
            f"--config.file={self.config_path}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address={listen}",
            # Empty disables clustering: no gossip listener on another address.
            "--cluster.listen-address=",
        ]
