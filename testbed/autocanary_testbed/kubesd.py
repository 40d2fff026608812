"""Prometheus's Kubernetes pod discovery, for a Prometheus built without it.

Debian's Prometheus (2.42) is built without ``kubernetes_sd_configs``. This is
its ``role: pod`` discovery run beside it: it watches pods through the API
server with Prometheus's own kubeconfig (a ServiceAccount token, so the
ServiceAccount's RBAC decides what it may see) and writes the targets, with
the same ``__meta_kubernetes_*`` labels Prometheus's discovery gives them, to
a ``file_sd_configs`` file that Prometheus re-reads on every change. Relabelling
(what a PodMonitor or ``kubernetes_sd_configs`` job does with those labels) is
then Prometheus's own.

As in Prometheus: one target per declared container port (``podIP:port``), one
per container without ports (``podIP``); pods without an IP yet have none; a
deleted pod's targets go at once.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import structlog
from kubernetes import client, config

from autocanary_testbed.errors import HarnessError

log = structlog.get_logger(__name__)

_META = "__meta_kubernetes_"
_API_TIMEOUT = (5.0, 10.0)
_STOP_TIMEOUT_S = 10.0


def _name(text: str) -> str:
    """A Kubernetes label or annotation name as a Prometheus label name part."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", text)


def pod_targets(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The target groups Prometheus's ``role: pod`` discovery makes of ``pod`` (JSON form)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    ip = status.get("podIP")
    if not ip:
        return []
    labels: dict[str, str] = {
        f"{_META}namespace": str(meta.get("namespace", "")),
        f"{_META}pod_name": str(meta.get("name", "")),
        f"{_META}pod_ip": str(ip),
        f"{_META}pod_ready": str(
            any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or []
            )
        ).lower(),
        f"{_META}pod_phase": str(status.get("phase", "")),
        f"{_META}pod_node_name": str(spec.get("nodeName", "")),
        f"{_META}pod_host_ip": str(status.get("hostIP", "")),
        f"{_META}pod_uid": str(meta.get("uid", "")),
    }
    for key, value in (meta.get("labels") or {}).items():
        labels[f"{_META}pod_label_{_name(key)}"] = str(value)
        labels[f"{_META}pod_labelpresent_{_name(key)}"] = "true"
    for key, value in (meta.get("annotations") or {}).items():
        labels[f"{_META}pod_annotation_{_name(key)}"] = str(value)
        labels[f"{_META}pod_annotationpresent_{_name(key)}"] = "true"
    for owner in meta.get("ownerReferences") or []:
        if owner.get("controller"):
            labels[f"{_META}pod_controller_kind"] = str(owner.get("kind", ""))
            labels[f"{_META}pod_controller_name"] = str(owner.get("name", ""))
    groups = []
    for container in spec.get("containers") or []:
        common = {
            f"{_META}pod_container_name": str(container.get("name", "")),
            f"{_META}pod_container_image": str(container.get("image", "")),
            f"{_META}pod_container_init": "false",
        }
        ports = container.get("ports") or []
        if not ports:
            groups.append({"targets": [str(ip)], "labels": {**labels, **common}})
        for port in ports:
            number = int(port["containerPort"])
            groups.append(
                {
                    "targets": [f"{ip}:{number}"],
                    "labels": {
                        **labels,
                        **common,
                        f"{_META}pod_container_port_name": str(port.get("name", "")),
                        f"{_META}pod_container_port_number": str(number),
                        f"{_META}pod_container_port_protocol": str(port.get("protocol", "TCP")),
                    },
                }
            )
    return groups


class PodDiscovery:
    """Writes the pod targets of ``namespaces`` to ``path`` while running, as they change."""

    def __init__(
        self, kubeconfig: Path, namespaces: Sequence[str], path: Path, *, poll_s: float = 0.5
    ) -> None:
        """Discover with the identity in ``kubeconfig``; :meth:`start` begins."""
        self.kubeconfig = kubeconfig
        self.namespaces = tuple(namespaces)
        self.path = path
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._api: client.ApiClient | None = None
        self._written: str | None = None

    def start(self) -> Self:
        """List once (failing loudly, e.g. when RBAC forbids it), then keep the file current."""
        self._api = config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.sync()
        except client.ApiException as e:
            raise HarnessError(f"pod discovery cannot list pods: {e.status} {e.reason}") from e
        self._thread = threading.Thread(target=self._run, name="pod-discovery", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop discovering; the file keeps the last targets."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(_STOP_TIMEOUT_S)
        if self._api is not None:
            self._api.close()  # type: ignore[no-untyped-call]  # untyped in kubernetes
            self._api = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def sync(self) -> None:
        """List the pods now and rewrite the file if the targets changed."""
        core: Any = client.CoreV1Api(self._api)
        groups = []
        for namespace in self.namespaces:
            response = core.list_namespaced_pod(
                namespace, _preload_content=False, _request_timeout=_API_TIMEOUT
            )
            pods = sorted(json.loads(response.data)["items"], key=lambda p: p["metadata"]["name"])
            for pod in pods:
                groups.extend(pod_targets(pod))
        text = json.dumps(groups, indent=1, sort_keys=True)
        if text != self._written:
            # Replaced whole (rename), so Prometheus never reads half a file.
            partial = self.path.with_name(f".{self.path.name}.tmp")
            partial.write_text(text)
            os.replace(partial, self.path)
            self._written = text
            log.debug("pod targets written", targets=len(groups), path=str(self.path))

    def _run(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                self.sync()
            except Exception as e:  # noqa: BLE001 -- a flaky API read must not end discovery
                log.warning("pod discovery round failed", error=str(e))
