"""A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver, controller-manager,
scheduler, and KWOK standing in for kubelets.

``ControlPlane().start()`` brings the pieces up in order, each on a free port and
each awaited on its own readiness signal, then registers one KWOK node and waits
until pods can be scheduled there. ``stop()`` ends the processes by PID, newest
first, and removes the work directory (kept when ``AUTOCANARY_KEEP=1``).
"""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import structlog
import yaml
from kubernetes import client
from kubernetes.client import ApiException
from urllib3 import HTTPHeaderDict

from autocanary_testbed.binaries import find_binaries
from autocanary_testbed.errors import HarnessError
from autocanary_testbed.http_checks import http_ready
from autocanary_testbed.kwok_stages import REPLACED_STAGES, RUNNER_ANNOTATION, write_pod_stages
from autocanary_testbed.network import PodNetwork
from autocanary_testbed.pki import Pki, make_pki
from autocanary_testbed.procs import ManagedProcess, ProcessGroup, free_port

__all__ = ["CONTROLLERS", "NODE_NAME", "RUNNER_NAMESPACE_LABEL", "ControlPlane", "find_binaries"]

log = structlog.get_logger(__name__)
_T = TypeVar("_T")

NODE_NAME = "kwok-node-0"
#: Namespace label saying a pod runner runs the namespace's pods (see ``kwok_stages``).
RUNNER_NAMESPACE_LABEL = "testbed.autocanary.io/pod-runner"
# What a Deployment-driven rollout needs, and no more (no kubelet, no cloud, no IPAM);
# EndpointSlices feed the Service proxy, as they feed kube-proxy.
CONTROLLERS = (
    "deployment-controller",
    "replicaset-controller",
    "endpointslice-controller",
    "serviceaccount-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "node-lifecycle-controller",
)

_API_TIMEOUT_S = 10.0
_ETCD_READY_S = 60.0
_APISERVER_READY_S = 180.0
_COMPONENT_READY_S = 90.0
_NODE_READY_S = 120.0
_SERVICE_ACCOUNT_READY_S = 60.0
_ADMISSION_READY_S = 60.0
_NAMESPACE_GONE_S = 120.0
_ADMISSION_CHECK_NAMESPACE = "testbed-system"
_RUNNER_POLICY = "testbed-pod-runner"
_NOT_READY_TAINTS = frozenset({"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"})


class ControlPlane:
    """etcd, kube-apiserver, controller-manager, scheduler and KWOK, started as local processes.

    Use ``with ControlPlane() as cp:`` (binaries from ``find_binaries()``, a fresh
    temporary work directory) or ``with ControlPlane().start(bin_dir, workdir) as cp:``.
    """

    def __init__(self, *, extra_args: dict[str, Sequence[str]] | None = None) -> None:
        """Create a stopped control plane; ``start`` brings it up.

        ``extra_args`` adds flags per component (``{"kube-controller-manager":
        ["--kube-api-qps=500"]}``): benchmarks that create thousands of objects
        lift the controllers' client rate limits with it.
        """
        self.keep_workdir = os.environ.get("AUTOCANARY_KEEP") == "1"
        self._extra_args = {k: list(v) for k, v in (extra_args or {}).items()}
        self._procs: ProcessGroup | None = None
        self._workdir: Path | None = None
        self._pki: Pki | None = None
        self._api_port: int | None = None
        self._admin: client.ApiClient | None = None
        self._named: dict[str, ManagedProcess] = {}
        self._started: dict[str, tuple[list[str], dict[str, str] | None]] = {}  # argv, env
        self._network: PodNetwork | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self, bin_dir: Path | None = None, workdir: Path | None = None) -> Self:
        """Start every component and wait until pods can run; return self.

        ``workdir`` is owned from now on: it is deleted by ``stop``. On any failure
        the started processes are stopped and a HarnessError says which part failed.
        """
        if self._procs is not None:
            raise HarnessError("control plane already started")
        bin_dir = bin_dir or find_binaries()
        if workdir is None:
            workdir = Path(tempfile.mkdtemp(prefix="autocanary-cp-"))
        workdir.mkdir(parents=True, exist_ok=True)
        if any(workdir.iterdir()):
            # Old etcd data or a registered node from an earlier run would not match the new PKI.
            raise HarnessError(f"control plane work directory {workdir} is not empty")
        self._workdir = workdir.resolve()
        self._procs = ProcessGroup(self._workdir / "logs")
        began = time.monotonic()
        try:
            self._boot(bin_dir.resolve())
        except BaseException:
            self.stop()
            raise
        log.info(
            "control plane ready",
            server=self.server_url,
            workdir=str(self._workdir),
            seconds=round(time.monotonic() - began, 1),
        )
        return self

    def stop(self) -> None:
        """Stop the processes (newest first, by PID) and remove the work directory. Idempotent."""
        if self._admin is not None:
            self._admin.close()  # type: ignore[no-untyped-call]  # untyped in kubernetes
            self._admin = None
        try:
            if self._procs is not None:
                self._procs.stop()
        finally:
            self._procs = None
            self._named = {}
            self._pki = None
            self._api_port = None
            if self._network is not None:
                self._network.release()
                self._network = None
            if self._workdir is not None:
                if self.keep_workdir:
                    log.info("control plane work directory kept", workdir=str(self._workdir))
                else:
                    shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None

    def __enter__(self) -> Self:
        if self._procs is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- what tests use ------------------------------------------------------------------

    @property
    def workdir(self) -> Path:
        """The work directory: PKI, kubeconfig, etcd data, ``logs/``."""
        return self._require(self._workdir, "workdir")

    @property
    def server_url(self) -> str:
        """The API server's URL, ``https://127.0.0.1:<port>``."""
        return f"https://127.0.0.1:{self._require(self._api_port, 'server_url')}"

    @property
    def kubeconfig_path(self) -> Path:
        """A kubeconfig for the admin user (``system:masters``), with absolute paths."""
        return self.workdir / "admin.kubeconfig"

    @property
    def ca_cert_path(self) -> Path:
        """The CA certificate that signed the API server's serving certificate."""
        return self._require(self._pki, "ca_cert_path").ca_cert

    @property
    def pod_network(self) -> PodNetwork:
        """Where pods get their IPs, and where their processes listen."""
        return self._require(self._network, "pod_network")

    @property
    def processes(self) -> tuple[ManagedProcess, ...]:
        """The running component processes, in start order."""
        return self._require(self._procs, "processes").members

    def api_client(self) -> client.ApiClient:
        """A new admin ApiClient (client certificate in ``system:masters``); close it when done."""
        return client.ApiClient(self._configuration())

    def impersonating_client(self, user: str, groups: Sequence[str] = ()) -> client.ApiClient:
        """A new admin ApiClient whose requests act as ``user`` (and ``groups``) via impersonation.

        For a ServiceAccount pass ``system:serviceaccount:<namespace>:<name>``; the
        API server then adds the ServiceAccount groups itself.
        """
        return _ImpersonatingApiClient(self._configuration(), user, tuple(groups))

    def restart_apiserver(self) -> None:
        """Stop kube-apiserver and start it again on the same port, etcd and certificates.

        Every watch and connection breaks; what is stored stays. Returns once the
        new one serves /readyz.
        """
        procs = self._require(self._procs, "restart_apiserver")
        old = self._named["kube-apiserver"]
        old.stop()
        argv, env = self._started["kube-apiserver"]
        new = ManagedProcess.start(
            "kube-apiserver", argv, log_dir=procs.log_dir, env=env, cwd=self.workdir
        )
        procs.replace(old, new)
        self._named["kube-apiserver"] = new
        pki = self._require(self._pki, "restart_apiserver")
        tls = ssl.create_default_context(cafile=str(pki.ca_cert))
        tls.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
        new.wait_ready(
            http_ready(f"{self.server_url}/readyz", tls=tls), _APISERVER_READY_S, "serving /readyz"
        )

    def create_namespace(self, name: str, *, pod_runner: bool = False) -> None:
        """Create a namespace and wait for its ``default`` ServiceAccount (pods need it).

        With ``pod_runner``, its pods are marked at admission as run by a pod runner:
        scheduled, they become Running but not Ready until the runner says so.
        """
        core = client.CoreV1Api(self._admin_client())
        labels = {RUNNER_NAMESPACE_LABEL: "true"} if pod_runner else None
        body = client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels))
        try:
            core.create_namespace(body, _request_timeout=_API_TIMEOUT_S)
        except ApiException as e:
            if e.status != 409:
                raise
            # A namespace of that name from an earlier test is still being deleted.
            self._named["kube-controller-manager"].wait_ready(
                lambda: not self._namespace_exists(name),
                _NAMESPACE_GONE_S,
                f"namespace {name!r} from before deleted",
            )
            core.create_namespace(body, _request_timeout=_API_TIMEOUT_S)
        self._wait_default_service_account(name)

    def delete_namespace(self, name: str) -> None:
        """Ask for a namespace's deletion (the namespace controller finishes it later)."""
        core = client.CoreV1Api(self._admin_client())
        try:
            core.delete_namespace(name, _request_timeout=_API_TIMEOUT_S)
        except ApiException as e:
            if e.status != 404:
                raise

    def _namespace_exists(self, name: str) -> bool:
        try:
            client.CoreV1Api(self._admin_client()).read_namespace(
                name, _request_timeout=_API_TIMEOUT_S
            )
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    # ---- boot sequence -------------------------------------------------------------------

    def _boot(self, bin_dir: Path) -> None:
        w = self.workdir
        self._network = network = PodNetwork.reserve()
        self._pki = pki = make_pki(w / "pki", network.kubernetes_service_ip)
        tls = ssl.create_default_context(cafile=str(pki.ca_cert))
        tls.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
        ports = {n: free_port() for n in ("etcd", "peer", "api", "kcm", "sched", "kwok")}
        self._api_port = ports["api"]
        self._write_kubeconfig()

        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        peer_url = f"http://127.0.0.1:{ports['peer']}"
        self._run(
            "etcd",
            [
                str(bin_dir / "etcd"),
                "--name=autocanary",
                f"--data-dir={w / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=autocanary={peer_url}",
                # Throwaway data: skipping fsync makes a 2-core CI machine much faster.
                "--unsafe-no-fsync",
                "--auto-compaction-retention=1",
            ],
            ready=http_ready(f"{etcd_url}/readyz"),
            timeout=_ETCD_READY_S,
            what="serving /readyz",
        )
        self._run(
            "kube-apiserver",
            [
                str(bin_dir / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['api']}",
                # Advertising 127.0.0.1 is only allowed without the endpoint reconciler.
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                f"--cert-dir={w / 'apiserver'}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.sa_public_key}",
                f"--service-account-signing-key-file={pki.sa_private_key}",
                # Loopback cluster IPs, served by the test bed's kube-proxy (see network).
                f"--service-cluster-ip-range={network.service_cidr}",
                "--authorization-mode=RBAC",
            ],
            ready=http_ready(f"{self.server_url}/readyz", tls=tls),
            timeout=_APISERVER_READY_S,
            what="serving /readyz",
        )
        serving = [
            "--bind-address=127.0.0.1",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--kubeconfig={self.kubeconfig_path}",
            "--leader-elect=false",
        ]
        kcm = self._spawn(
            "kube-controller-manager",
            [
                str(bin_dir / "kube-controller-manager"),
                *serving,
                f"--secure-port={ports['kcm']}",
                f"--cert-dir={w / 'kcm'}",
                f"--controllers={','.join(CONTROLLERS)}",
                f"--root-ca-file={pki.ca_cert}",
                f"--service-account-private-key-file={pki.sa_private_key}",
                # Notice the KWOK node turning Ready (and lift its taint) within a second.
                "--node-monitor-period=1s",
            ],
        )
        sched = self._spawn(
            "kube-scheduler",
            [
                str(bin_dir / "kube-scheduler"),
                *serving,
                f"--secure-port={ports['sched']}",
                f"--cert-dir={w / 'scheduler'}",
            ],
        )
        self._await(kcm, http_ready(f"https://127.0.0.1:{ports['kcm']}/healthz", tls=tls))
        self._await(sched, http_ready(f"https://127.0.0.1:{ports['sched']}/healthz", tls=tls))

        # KWOK's node stages and pod-complete as built; the pod stages are the test bed's.
        stages = [
            p for p in sorted((bin_dir / "stages").glob("*.yaml")) if p.name not in REPLACED_STAGES
        ]
        stages += write_pod_stages(w / "stages")
        kwok = self._run(
            "kwok",
            [
                str(bin_dir / "kwok"),
                f"--kubeconfig={self.kubeconfig_path}",
                "--config=" + ",".join(str(p) for p in stages),
                "--manage-all-nodes=true",
                f"--server-address=127.0.0.1:{ports['kwok']}",
                "--node-lease-duration-seconds=40",
                # Pod IPs; a pod's process listens on the address's loopback twin.
                f"--cidr={network.pod_cidr}",
                f"--node-ip={network.node_ip}",
            ],
            # kwok always merges ~/.kwok/kwok.yaml; a private HOME keeps a stray one out.
            env={"HOME": str(w)},
            ready=http_ready(f"http://127.0.0.1:{ports['kwok']}/healthz"),
            timeout=_COMPONENT_READY_S,
            what="serving /healthz",
        )
        self._register_node()
        began = time.monotonic()
        kwok.wait_ready(self._node_schedulable, _NODE_READY_S, f"node {NODE_NAME} schedulable")
        log.debug("node schedulable", seconds=round(time.monotonic() - began, 1))
        self._wait_default_service_account("default")
        self._install_runner_admission()

    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> ManagedProcess:
        procs = self._require(self._procs, "processes")
        argv = [*argv, *self._extra_args.get(name, ())]
        self._started[name] = (argv, env)
        proc = procs.start(name, argv, env=env, cwd=self.workdir)
        self._named[name] = proc
        return proc

    def _await(self, proc: ManagedProcess, ready: Callable[[], bool]) -> None:
        began = time.monotonic()
        proc.wait_ready(ready, _COMPONENT_READY_S, "serving /healthz")
        log.debug("component ready", name=proc.name, seconds=round(time.monotonic() - began, 1))

    def _run(
        self,
        name: str,
        argv: list[str],
        *,
        ready: Callable[[], bool],
        timeout: float,
        what: str,
        env: dict[str, str] | None = None,
    ) -> ManagedProcess:
        proc = self._spawn(name, argv, env)
        began = time.monotonic()
        proc.wait_ready(ready, timeout, what)
        log.debug("component ready", name=name, seconds=round(time.monotonic() - began, 1))
        return proc

    def _write_kubeconfig(self) -> None:
        pki = self._require(self._pki, "kubeconfig")
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "autocanary-test",
                    "cluster": {
                        "server": self.server_url,
                        "certificate-authority": str(pki.ca_cert),
                    },
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate": str(pki.admin_cert),
                        "client-key": str(pki.admin_key),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "autocanary-test",
                    "context": {"cluster": "autocanary-test", "user": "admin"},
                }
            ],
            "current-context": "autocanary-test",
        }
        self.kubeconfig_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def _register_node(self) -> None:
        node = client.V1Node(
            metadata=client.V1ObjectMeta(
                name=NODE_NAME,
                labels={
                    "type": "kwok",
                    "kubernetes.io/hostname": NODE_NAME,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
                # KWOK fills in the status of nodes carrying this annotation.
                annotations={"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            )
        )
        client.CoreV1Api(self._admin_client()).create_node(node, _request_timeout=_API_TIMEOUT_S)

    def _node_schedulable(self) -> bool:
        core = client.CoreV1Api(self._admin_client())
        node = core.read_node(NODE_NAME, _request_timeout=_API_TIMEOUT_S)
        conditions = (node.status.conditions if node.status else None) or []
        ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
        taints = {t.key for t in ((node.spec.taints if node.spec else None) or [])}
        return ready and not taints & _NOT_READY_TAINTS

    def _wait_default_service_account(self, namespace: str) -> None:
        core = client.CoreV1Api(self._admin_client())

        def present() -> bool:
            try:
                core.read_namespaced_service_account(
                    "default", namespace, _request_timeout=_API_TIMEOUT_S
                )
            except ApiException as e:
                if e.status == 404:
                    return False
                raise
            return True

        # The controller-manager's serviceaccount controller creates it.
        self._named["kube-controller-manager"].wait_ready(
            present, _SERVICE_ACCOUNT_READY_S, f"default ServiceAccount in {namespace!r} created"
        )

    def _install_runner_admission(self) -> None:
        """Mark pods in namespaces labelled for a pod runner, as a cluster's admission would.

        A MutatingAdmissionPolicy (GA in 1.36) adds :data:`RUNNER_ANNOTATION` to
        every pod created in a namespace carrying :data:`RUNNER_NAMESPACE_LABEL`;
        KWOK's stages key on it. Policies take effect a moment after they are
        created, so a dry-run pod in a labelled namespace is admitted until it is marked.
        """
        api = self._admin_client()
        policy = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingAdmissionPolicy",
            "metadata": {"name": _RUNNER_POLICY},
            "spec": {
                "failurePolicy": "Fail",
                "reinvocationPolicy": "Never",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["pods"],
                        }
                    ]
                },
                "mutations": [
                    {
                        "patchType": "ApplyConfiguration",
                        "applyConfiguration": {
                            "expression": "Object{metadata: Object.metadata{annotations: "
                            f'{{"{RUNNER_ANNOTATION}": "true"}}}}}}'
                        },
                    }
                ],
            },
        }
        binding = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingAdmissionPolicyBinding",
            "metadata": {"name": _RUNNER_POLICY},
            "spec": {
                "policyName": _RUNNER_POLICY,
                "matchResources": {
                    "namespaceSelector": {"matchLabels": {RUNNER_NAMESPACE_LABEL: "true"}}
                },
            },
        }
        # Any cluster-scoped resource goes through the custom-objects calls.
        objects = client.CustomObjectsApi(api)
        for plural, body in (
            ("mutatingadmissionpolicies", policy),
            ("mutatingadmissionpolicybindings", binding),
        ):
            objects.create_cluster_custom_object(
                "admissionregistration.k8s.io", "v1", plural, body, _request_timeout=_API_TIMEOUT_S
            )
        self.create_namespace(_ADMISSION_CHECK_NAMESPACE, pod_runner=True)
        core: Any = client.CoreV1Api(api)
        probe = client.V1Pod(
            metadata=client.V1ObjectMeta(name="admission-check"),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="none")]),
        )

        def marked() -> bool:
            pod = core.create_namespaced_pod(
                _ADMISSION_CHECK_NAMESPACE, probe, dry_run="All", _request_timeout=_API_TIMEOUT_S
            )
            return RUNNER_ANNOTATION in (pod.metadata.annotations or {})

        self._named["kube-apiserver"].wait_ready(
            marked, _ADMISSION_READY_S, "marking pods for the pod runner at admission"
        )

    # ---- helpers -------------------------------------------------------------------------

    def _configuration(self) -> client.Configuration:
        pki = self._require(self._pki, "api_client")
        cfg = client.Configuration()
        cfg.host = self.server_url
        cfg.ssl_ca_cert = str(pki.ca_cert)
        cfg.cert_file = str(pki.admin_cert)
        cfg.key_file = str(pki.admin_key)
        cfg.verify_ssl = True
        return cfg

    def _admin_client(self) -> client.ApiClient:
        if self._admin is None:
            self._admin = self.api_client()
        return self._admin

    @staticmethod
    def _require(value: _T | None, what: str) -> _T:
        if value is None:
            raise HarnessError(f"control plane not started: {what} is unavailable")
        return value


class _ImpersonatingApiClient(client.ApiClient):
    """An ApiClient adding Impersonate-User and one Impersonate-Group header per group.

    The stock client keeps headers in a plain dict, which cannot repeat a header;
    urllib3's HTTPHeaderDict can, and is sent as is.
    """

    def __init__(self, configuration: client.Configuration, user: str, groups: tuple[str, ...]):
        super().__init__(configuration)
        self._user = user
        self._groups = groups

    def call_api(
        self, method: str, url: str, header_params: Any = None, *args: Any, **kw: Any
    ) -> Any:
        headers = HTTPHeaderDict(header_params or {})
        headers["Impersonate-User"] = self._user
        for group in self._groups:
            headers.add("Impersonate-Group", group)
        return super().call_api(method, url, headers, *args, **kw)
