"""A real Gateway API implementation on the test bed: Traefik and its Kubernetes Gateway provider.

``install_gateway_api`` puts the Gateway API's standard-channel CRDs (from the
pinned ``sigs.k8s.io/gateway-api`` module, copied by ``hack/traefik/build.sh``)
into the API server. ``TraefikGateway`` then runs Traefik (built from the Go
module proxy by the same script) as a gateway controller would run in a
cluster:

- as the process of a Pod: the harness creates Pod ``traefik`` (labelled
  ``app.kubernetes.io/name: traefik``) in a namespace of its own, KWOK
  schedules it and gives it a pod IP, and the harness, as the kubelet, starts
  the Traefik binary on that IP's loopback twin (see
  :mod:`autocanary_testbed.network`): entry point ``web`` on port 8000 for the
  Gateway's listener, ``metrics`` on port 9100 for ``/metrics`` and ``/ping``.
  Prometheus therefore discovers Traefik as any pod, through a PodMonitor
  (:attr:`TraefikGateway.pod_monitor`), and scrapes it at the stack's interval;
- as ServiceAccount ``traefik`` with the ClusterRole Traefik's documentation
  gives its Gateway provider (:data:`TRAEFIK_RULES`), through a token from the
  TokenRequest API (endpoint, token and CA passed as for a Traefik outside
  the cluster: the in-cluster path reads a fixed file location);
- owning GatewayClass ``traefik`` (controller ``traefik.io/gateway-controller``)
  and one Gateway whose HTTP listener is entry point ``web``; HTTPRoutes in the
  watched namespaces attach to it.

Reaching the pods. By default Traefik's provider reads a backend Service's
EndpointSlices and dials the pod IPs in them. Here those are ``10.<n>.c.d``
(the API server refuses loopback addresses in EndpointSlices), and nothing in
the test bed may dial anything but loopback. So Traefik runs in native
load-balancing mode (``nativeLBByDefault``, the provider's documented option):
it dials each backend Service's cluster IP and port, and the test bed's
cluster IPs are loopback addresses (``network.service_cidr``) on which the
test bed's kube-proxy (:class:`autocanary_testbed.kubeproxy.KubeProxyProcess`
with ``cluster_ip``) listens and balances over the Service's ready endpoints,
as kube-proxy's rules catch cluster IPs in a cluster. The weights between an
HTTPRoute's backendRefs (and its matches) are Traefik's alone: its weighted
round robin picks the Service per request; only the pod inside the chosen
Service is kube-proxy's choice, as it is for any gateway in that mode.
Alternatives ruled out: loopback pod IPs (refused in EndpointSlices), and an
address-translating proxy in front of Traefik (Traefik would no longer be
what routes).

Traefik is started with its version check and anonymous usage reports off, so
it sends nothing anywhere but to the API server and the cluster IPs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import structlog
import yaml
from kubernetes import client
from kubernetes.client import ApiException

from autocanary_testbed.binaries import TRAEFIK_VERSION, find_gateway_api_crds, find_traefik
from autocanary_testbed.errors import HarnessError
from autocanary_testbed.http_checks import http_ok
from autocanary_testbed.monitoring import PodMonitor
from autocanary_testbed.network import PodNetwork
from autocanary_testbed.procs import ManagedProcess
from autocanary_testbed.waiting import wait_until

log = structlog.get_logger(__name__)

GROUP = "gateway.networking.k8s.io"
VERSION = "v1"
CONTROLLER_NAME = "traefik.io/gateway-controller"
GATEWAY_CLASS = "traefik"
#: The Gateway's HTTP listener and Traefik's entry point for it share this port.
WEB_PORT = 8000
METRICS_PORT = 9100
#: Traefik's request duration buckets (seconds): its default (0.1, 0.3, 1.2, 5) is too
#: coarse to tell a p95 of 50ms from one of 250ms.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

#: What Traefik's Kubernetes Gateway provider may do, as Traefik's documentation
#: grants it (``kubernetes-gateway-rbac.yml``), less ``pods get``, which only its
#: OpenTelemetry attributes need.
TRAEFIK_RULES: tuple[dict[str, Any], ...] = (
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    {
        "apiGroups": [""],
        "resources": ["services", "secrets", "configmaps"],
        "verbs": ["get", "list", "watch"],
    },
    {
        "apiGroups": ["discovery.k8s.io"],
        "resources": ["endpointslices"],
        "verbs": ["list", "watch"],
    },
    {
        "apiGroups": [GROUP],
        "resources": [
            "gatewayclasses",
            "gateways",
            "httproutes",
            "grpcroutes",
            "tcproutes",
            "tlsroutes",
            "referencegrants",
            "backendtlspolicies",
        ],
        "verbs": ["get", "list", "watch"],
    },
    {
        "apiGroups": [GROUP],
        "resources": [
            "gatewayclasses/status",
            "gateways/status",
            "httproutes/status",
            "grpcroutes/status",
            "tcproutes/status",
            "tlsroutes/status",
            "referencegrants/status",
            "backendtlspolicies/status",
        ],
        "verbs": ["update"],
    },
)

_API_TIMEOUT = (5.0, 10.0)
_CRDS_ESTABLISHED_S = 60.0
_POD_IP_S = 60.0
_READY_S = 60.0
_STOP_S = 10.0
_TOKEN_SECONDS = 24 * 3600
_ACCOUNT = "traefik"
_POD = "traefik"
_POD_LABELS = {"app.kubernetes.io/name": "traefik"}
# Cluster-scoped kinds of the CRD bundle besides the CRDs: (group, version, plural).
_BUNDLE_KINDS = {
    "ValidatingAdmissionPolicy": (
        "admissionregistration.k8s.io",
        "v1",
        "validatingadmissionpolicies",
    ),
    "ValidatingAdmissionPolicyBinding": (
        "admissionregistration.k8s.io",
        "v1",
        "validatingadmissionpolicybindings",
    ),
}


def install_gateway_api(api_client: client.ApiClient, bundle: Path | None = None) -> list[str]:
    """Create the Gateway API's CRDs (and the bundle's admission policy); wait until served.

    ``bundle`` defaults to the standard channel copied by ``hack/traefik/build.sh --crds-only``.
    Objects already there (an earlier stack on this cluster) are left as they are.
    Returns the CRDs' names. Raises HarnessError for an object the API server refuses
    or CRDs not established in time.
    """
    path = bundle or find_gateway_api_crds()
    extensions: Any = client.ApiextensionsV1Api(api_client)
    objects: Any = client.CustomObjectsApi(api_client)
    names: list[str] = []
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc:
            continue
        kind, name = doc["kind"], doc["metadata"]["name"]
        try:
            if kind == "CustomResourceDefinition":
                names.append(name)
                # Raw answers: the client's models would parse each large schema for nothing.
                extensions.create_custom_resource_definition(
                    doc, _preload_content=False, _request_timeout=_API_TIMEOUT
                )
            elif kind in _BUNDLE_KINDS:
                group, version, plural = _BUNDLE_KINDS[kind]
                objects.create_cluster_custom_object(
                    group, version, plural, doc, _request_timeout=_API_TIMEOUT
                )
            else:
                raise HarnessError(f"{path}: unexpected {kind} {name} in the Gateway API bundle")
        except ApiException as e:
            if e.status != 409:
                raise HarnessError(f"the API server refused {kind} {name}: {e.body}") from e

    def established() -> bool:
        for name in names:
            response = extensions.read_custom_resource_definition(
                name, _preload_content=False, _request_timeout=_API_TIMEOUT
            )
            conditions = (json.loads(response.data).get("status") or {}).get("conditions") or []
            if not any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                return False
        return True

    wait_until(established, timeout=_CRDS_ESTABLISHED_S, what="Gateway API CRDs established")
    return names


def backend_ref(service: str, weight: int, port: int) -> dict[str, Any]:
    """An HTTPRoute backendRef to Service ``service`` on ``port`` with ``weight``."""
    return {"kind": "Service", "name": service, "port": port, "weight": weight}


def http_route(
    name: str,
    gateway: tuple[str, str],
    rules: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """An HTTPRoute ``name`` attached to ``gateway`` (namespace, name), with ``rules``.

    Each rule is an HTTPRoute rule as the API spells it (``matches``, ``backendRefs``).
    """
    namespace, gateway_name = gateway
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {
            "parentRefs": [{"name": gateway_name, "namespace": namespace, "sectionName": "web"}],
            "rules": [dict(rule) for rule in rules],
        },
    }


def route_accepted(route: Mapping[str, Any]) -> bool:
    """Whether a Gateway accepted the HTTPRoute and resolved all its backendRefs."""
    for parent in (route.get("status") or {}).get("parents") or []:
        conditions = {c["type"]: c["status"] for c in parent.get("conditions") or []}
        if conditions.get("Accepted") == "True" and conditions.get("ResolvedRefs") == "True":
            return True
    return False


class TraefikGateway:
    """Traefik as the Gateway API controller of one Gateway, run as a Pod's process.

    The Pod, its ServiceAccount and the Gateway live in ``namespace`` (not a pod
    runner's: the harness runs Traefik itself); Traefik watches ``namespace``
    and ``route_namespaces`` for routes. :meth:`stop` stops the process and
    deletes ``namespace``.
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        server_url: str,
        ca_cert: Path,
        network: PodNetwork,
        namespace: str,
        route_namespaces: Sequence[str],
        workdir: Path,
        create_namespace: Callable[[str], None],
        delete_namespace: Callable[[str], None],
    ) -> None:
        """Prepare; :meth:`start` brings it up.

        ``create_namespace`` and ``delete_namespace`` are the control plane's (they
        wait for a namespace of the same name from an earlier test to be gone).
        """
        self._api = api_client
        self._core: Any = client.CoreV1Api(api_client)
        self._objects: Any = client.CustomObjectsApi(api_client)
        self._server_url = server_url
        self._ca_cert = ca_cert
        self._network = network
        self.namespace = namespace
        self._route_namespaces = tuple(route_namespaces)
        self.workdir = workdir
        self._create_namespace = create_namespace
        self._delete_namespace = delete_namespace
        self.name = "gateway"
        self._pod_ip: str | None = None
        self._process: ManagedProcess | None = None

    # ---- what tests use ------------------------------------------------------------------

    @property
    def pod_ip(self) -> str:
        """Traefik's pod IP (``10.<n>.c.d``; it listens on the loopback twin)."""
        if self._pod_ip is None:
            raise HarnessError("Traefik not started")
        return self._pod_ip

    @property
    def url(self) -> str:
        """The Gateway's HTTP listener, ``http://127.<n>.c.d:8000``."""
        return f"http://{self._network.host_address(self.pod_ip, WEB_PORT)}"

    @property
    def metrics_url(self) -> str:
        """Traefik's Prometheus metrics."""
        return f"http://{self._network.host_address(self.pod_ip, METRICS_PORT)}/metrics"

    @property
    def ref(self) -> tuple[str, str]:
        """The Gateway as (namespace, name), what an HTTPRoute's parentRef names."""
        return self.namespace, self.name

    @property
    def pod_monitor(self) -> PodMonitor:
        """The PodMonitor a cluster's Prometheus would scrape Traefik by (port ``metrics``)."""
        return PodMonitor(
            name="traefik", namespace=self.namespace, selector=_POD_LABELS, port="metrics"
        )

    @property
    def pod_monitor_job(self) -> str:
        """The ``job`` label of Traefik's series."""
        return f"{self.namespace}/traefik"

    @property
    def process(self) -> ManagedProcess:
        """The Traefik process."""
        if self._process is None:
            raise HarnessError("Traefik not started")
        return self._process

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self) -> Self:
        """Install what Traefik needs, start it and wait until its Gateway is programmed."""
        install_gateway_api(self._api)
        self._create_namespace(self.namespace)
        token = self._account()
        self._create(
            "gatewayclasses",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "GatewayClass",
                "metadata": {"name": GATEWAY_CLASS},
                "spec": {"controllerName": CONTROLLER_NAME},
            },
            namespaced=False,
        )
        self._create(
            "gateways",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "Gateway",
                "metadata": {"name": self.name},
                "spec": {
                    "gatewayClassName": GATEWAY_CLASS,
                    "listeners": [
                        {
                            "name": "web",
                            "protocol": "HTTP",
                            "port": WEB_PORT,
                            "allowedRoutes": {"namespaces": {"from": "All"}},
                        }
                    ],
                },
            },
        )
        self._core.create_namespaced_pod(self.namespace, self._pod(), _request_timeout=_API_TIMEOUT)
        wait_until(self._read_pod_ip, timeout=_POD_IP_S, what="Traefik's pod given an IP")
        self._process = ManagedProcess.start(
            "traefik", self._argv(token), log_dir=self.workdir / "logs"
        )
        ping = f"http://{self._network.host_address(self.pod_ip, METRICS_PORT)}/ping"
        self._process.wait_ready(lambda: http_ok(ping), _READY_S, "answering /ping")
        self._process.wait_ready(self._programmed, _READY_S, "Gateway programmed")
        log.info("gateway ready", url=self.url, version=TRAEFIK_VERSION)
        return self

    def stop(self) -> None:
        """Stop Traefik (SIGTERM) and delete its namespace. Idempotent."""
        if self._process is not None:
            process, self._process = self._process, None
            process.stop(_STOP_S)
        self._delete_namespace(self.namespace)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- routes --------------------------------------------------------------------------

    def create_route(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create an HTTPRoute in ``namespace``; wait until Traefik accepted it; return it."""
        self._objects.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "httproutes", dict(body), _request_timeout=_API_TIMEOUT
        )
        name = body["metadata"]["name"]
        self.process.wait_ready(
            lambda: route_accepted(self.read_route(namespace, name)),
            _READY_S,
            f"HTTPRoute {namespace}/{name} accepted with its backends resolved",
        )
        return self.read_route(namespace, name)

    def read_route(self, namespace: str, name: str) -> dict[str, Any]:
        """The HTTPRoute ``namespace/name`` as the API server has it."""
        route: dict[str, Any] = self._objects.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "httproutes", name, _request_timeout=_API_TIMEOUT
        )
        return route

    # ---- set-up --------------------------------------------------------------------------

    def _account(self) -> str:
        """ServiceAccount ``traefik`` with :data:`TRAEFIK_RULES`; returns a token's file path."""
        rbac: Any = client.RbacAuthorizationV1Api(self._api)
        role = f"testbed-traefik-{self.namespace}"
        creations: tuple[Callable[[], object], ...] = (
            lambda: self._core.create_namespaced_service_account(
                self.namespace, {"metadata": {"name": _ACCOUNT}}, _request_timeout=_API_TIMEOUT
            ),
            lambda: rbac.create_cluster_role(
                {"metadata": {"name": role}, "rules": list(TRAEFIK_RULES)},
                _request_timeout=_API_TIMEOUT,
            ),
            lambda: rbac.create_cluster_role_binding(
                {
                    "metadata": {"name": role},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": role,
                    },
                    "subjects": [
                        {"kind": "ServiceAccount", "name": _ACCOUNT, "namespace": self.namespace}
                    ],
                },
                _request_timeout=_API_TIMEOUT,
            ),
        )
        for create in creations:
            try:
                create()
            except ApiException as e:
                if e.status != 409:  # from an earlier gateway of the same namespace name
                    raise HarnessError(f"cannot set up Traefik's ServiceAccount: {e}") from e
        token = self._core.create_namespaced_service_account_token(
            _ACCOUNT,
            self.namespace,
            {"spec": {"expirationSeconds": _TOKEN_SECONDS}},
            _request_timeout=_API_TIMEOUT,
        ).status.token
        path = self.workdir / "traefik-token"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        path.touch(mode=0o600)  # a credential: readable by its owner only, from the start
        path.write_text(token)
        return str(path)

    def _create(self, plural: str, body: dict[str, Any], *, namespaced: bool = True) -> None:
        try:
            if namespaced:
                self._objects.create_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, plural, body, _request_timeout=_API_TIMEOUT
                )
            else:
                self._objects.create_cluster_custom_object(
                    GROUP, VERSION, plural, body, _request_timeout=_API_TIMEOUT
                )
        except ApiException as e:
            if namespaced or e.status != 409:  # one GatewayClass serves every gateway
                raise HarnessError(f"cannot create {plural} {body['metadata']['name']}: {e}") from e

    def _pod(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": _POD, "labels": dict(_POD_LABELS)},
            "spec": {
                "serviceAccountName": _ACCOUNT,
                "containers": [
                    {
                        "name": "traefik",
                        "image": f"traefik:v{TRAEFIK_VERSION}",
                        "ports": [
                            {"name": "web", "containerPort": WEB_PORT},
                            {"name": "metrics", "containerPort": METRICS_PORT},
                        ],
                    }
                ],
            },
        }

    def _read_pod_ip(self) -> bool:
        pod = self._core.read_namespaced_pod(_POD, self.namespace, _request_timeout=_API_TIMEOUT)
        self._pod_ip = pod.status.pod_ip if pod.status else None
        return bool(self._pod_ip)

    def _argv(self, token_file: str) -> list[str]:
        host = self._network.host_ip(self.pod_ip)
        gateway = "--providers.kubernetesgateway"
        return [
            str(find_traefik() / "traefik"),
            "--global.checkNewVersion=false",
            "--global.sendAnonymousUsage=false",
            "--log.level=INFO",
            f"--entryPoints.web.address={host}:{WEB_PORT}",
            f"--entryPoints.metrics.address={host}:{METRICS_PORT}",
            "--ping=true",
            "--ping.entryPoint=metrics",
            "--metrics.prometheus=true",
            "--metrics.prometheus.entryPoint=metrics",
            "--metrics.prometheus.addServicesLabels=true",
            "--metrics.prometheus.addEntryPointsLabels=true",
            "--metrics.prometheus.buckets=" + ",".join(f"{b:g}" for b in DURATION_BUCKETS),
            f"{gateway}=true",
            f"{gateway}.endpoint={self._server_url}",
            f"{gateway}.token={token_file}",
            f"{gateway}.certAuthFilePath={self._ca_cert}",
            f"{gateway}.namespaces={','.join((self.namespace, *self._route_namespaces))}",
            # Dial Services' (loopback) cluster IPs, never pod IPs: see the module's docstring.
            f"{gateway}.nativeLBByDefault=true",
            f"{gateway}.statusAddress.ip={self.pod_ip}",
        ]

    def _programmed(self) -> bool:
        gateway = self._objects.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "gateways", self.name, _request_timeout=_API_TIMEOUT
        )
        conditions = {
            c["type"]: c["status"] for c in (gateway.get("status") or {}).get("conditions") or []
        }
        return conditions.get("Programmed") == "True"

    def __repr__(self) -> str:
        return f"TraefikGateway({json.dumps(self.namespace)}, {self._pod_ip})"
