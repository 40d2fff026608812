"""Argo Rollouts on the test bed: its CRDs, its controller as a process, a Rollout of the demo app.

``hack/argo-rollouts/build.sh`` builds the controller and copies its CRDs into
``${AUTOCANARY_CACHE:-${XDG_CACHE_HOME:-~/.cache}/autocanary}/argo-rollouts/
<ARGO_ROLLOUTS>-<go version>/`` (complete once ``.complete`` exists). The
controller runs out of cluster with the test bed's kubeconfig, watching one
namespace, as its own process: its CPU time and peak RSS are read from /proc.

The Rollout is the demo app of :mod:`autocanary_testbed.stack` (the same pod
template as the stable Deployment) with Argo's basic canary (no traffic
router): traffic splits by replica ratio, as autocanary's does. A release
changes the pod template's version label, image and fault variables, and sets
the background analysis (an AnalysisTemplate, the versions as arguments), in
one patch. Argo's metrics and health ports listen on all interfaces (it has no
address flag); the test bed only ever talks to them on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from autocanary_testbed.binaries import ARGO_ROLLOUTS_CRDS as CRDS
from autocanary_testbed.errors import HarnessError
from autocanary_testbed.http_checks import http_ok
from autocanary_testbed.procs import ManagedProcess, free_port
from autocanary_testbed.stack import app_deployment
from autocanary_testbed.waiting import wait_until

GROUP = "argoproj.io"
API_VERSION = "v1alpha1"
_API_TIMEOUT = (5.0, 10.0)


def install_crds(api: client.ApiClient, build: Path) -> None:
    """Create Argo Rollouts' CRDs (kept if present) and wait until each is Established."""
    ext = client.ApiextensionsV1Api(api)
    names = []
    for file in CRDS:
        body = yaml.safe_load((build / "crds" / file).read_text())
        names.append(body["metadata"]["name"])
        try:
            ext.create_custom_resource_definition(body, _request_timeout=_API_TIMEOUT)
        except ApiException as e:
            if e.status != 409:  # 409 Conflict: installed already
                raise HarnessError(f"cannot create CRD {file}: {e.status} {e.reason}") from e

    def established() -> bool:
        for name in names:
            crd: Any = ext.read_custom_resource_definition(
                name, _preload_content=False, _request_timeout=_API_TIMEOUT
            )
            conditions = json.loads(crd.data).get("status", {}).get("conditions") or []
            if not any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                return False
        return True

    wait_until(established, timeout=60, what="Argo Rollouts' CRDs Established")


def start_controller(
    build: Path, kubeconfig: Path, namespace: str, log_dir: Path, name: str = "argo-rollouts"
) -> tuple[ManagedProcess, int]:
    """Run ``rollouts-controller`` on ``namespace`` only; return it and its metrics port.

    It serves /metrics and /healthz on ports chosen here; returns once /healthz answers.
    """
    metrics, healthz = free_port(), free_port()
    process = ManagedProcess.start(
        name,
        [
            str(build / "rollouts-controller"),
            "--kubeconfig",
            str(kubeconfig),
            "--namespaced",
            "--namespace",
            namespace,
            "--metricsPort",
            str(metrics),
            "--healthzPort",
            str(healthz),
            "--leader-elect=false",
            "--loglevel",
            "info",
        ],
        log_dir=log_dir,
    )
    process.wait_ready(
        lambda: http_ok(f"http://127.0.0.1:{healthz}/healthz"), 60, "serving /healthz"
    )
    return process, metrics


@dataclass(frozen=True)
class Usage:
    """A process's CPU seconds (user + system) and peak resident memory, from /proc."""

    cpu_seconds: float
    peak_rss_mib: float


def usage(pid: int) -> Usage:
    """Read a live process's CPU time and VmHWM (its peak RSS) from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError as e:
        raise HarnessError(f"process {pid} is gone: its usage cannot be read") from e
    ticks = os.sysconf("SC_CLK_TCK")
    # Fields 14 and 15 of stat (utime, stime) are the 12th and 13th after the name.
    cpu = (int(stat[11]) + int(stat[12])) / ticks
    hwm = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return Usage(cpu_seconds=cpu, peak_rss_mib=int(hwm.split()[1]) / 1024)


def analysis_template(name: str, metrics: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """An AnalysisTemplate taking the canary's and the stable's versions as arguments."""
    return {
        "apiVersion": f"{GROUP}/{API_VERSION}",
        "kind": "AnalysisTemplate",
        "metadata": {"name": name},
        "spec": {
            "args": [{"name": "version"}, {"name": "stable-version"}],
            "metrics": [dict(m) for m in metrics],
        },
    }


def rollout(
    app: str,
    version: str,
    *,
    replicas: int,
    steps: Sequence[Mapping[str, Any]],
    env: Mapping[str, str] | None = None,
    progress_deadline_s: int | None = None,
    progress_deadline_abort: bool = False,
) -> dict[str, Any]:
    """A Rollout of the demo app (pod template as :func:`app_deployment`'s), basic canary.

    Its background analysis is set by :meth:`ArgoRollout.release` (a first
    version is not analysed, and the AnalysisTemplate needs Prometheus's
    address, known once the stack runs); ``progress_deadline_s`` None keeps
    Argo's default (600 s).
    """
    pod = app_deployment(app, app, "rollout", version, replicas=replicas, env=env)["spec"][
        "template"
    ]
    spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": {"app": app}},
        "template": pod,
        "strategy": {"canary": {"steps": [dict(s) for s in steps]}},
        "progressDeadlineAbort": progress_deadline_abort,
    }
    if progress_deadline_s is not None:
        spec["progressDeadlineSeconds"] = progress_deadline_s
    return {
        "apiVersion": f"{GROUP}/{API_VERSION}",
        "kind": "Rollout",
        "metadata": {"name": app, "labels": {"app": app}},
        "spec": spec,
    }


class ArgoRollout:
    """One Rollout on the test bed: releasing a version and reading what Argo did."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str) -> None:
        """Address the Rollout ``name`` in ``namespace``."""
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.name = name

    def get(self) -> dict[str, Any]:
        """The Rollout as JSON."""
        body: Any = self.custom.get_namespaced_custom_object(
            GROUP, API_VERSION, self.namespace, "rollouts", self.name, _request_timeout=_API_TIMEOUT
        )
        rollout: dict[str, Any] = body
        return rollout

    def release(
        self,
        version: str,
        template: str,
        env: Mapping[str, str] | None = None,
        starting_step: int = 0,
    ) -> None:
        """Ship ``version`` (faults via ``env``), judged from ``starting_step`` by ``template``.

        One patch: the pod template, and the background analysis with the canary's
        and the stable's versions as arguments. A measurement with no data is an
        Error, retried every 10 s, and five in a row abort the release: starting
        after the first ``setWeight`` (step 1), as Argo's documentation shows,
        waits until the canary's pods are available.
        """
        current = self.get()
        stable = current["spec"]["template"]["metadata"]["labels"]["version"]
        container = current["spec"]["template"]["spec"]["containers"][0]
        image = container["image"].rsplit(":", 1)[0]
        variables = [v for v in container["env"] if "valueFrom" in v]
        variables += [{"name": k, "value": v} for k, v in (env or {}).items()]
        patch = {
            "spec": {
                "template": {
                    "metadata": {"labels": {"version": version}},
                    "spec": {
                        "containers": [
                            {**container, "image": f"{image}:{version}", "env": variables}
                        ]
                    },
                },
                "strategy": {
                    "canary": {
                        "analysis": {
                            "templates": [{"templateName": template}],
                            "startingStep": starting_step,
                            "args": [
                                {"name": "version", "value": version},
                                {"name": "stable-version", "value": stable},
                            ],
                        }
                    }
                },
            }
        }
        self.custom.patch_namespaced_custom_object(
            GROUP,
            API_VERSION,
            self.namespace,
            "rollouts",
            self.name,
            patch,
            _request_timeout=_API_TIMEOUT,
        )

    def outcome(self, version: str) -> str | None:
        """What Argo made of the release of ``version``, None while it is undecided.

        ``rolledBack`` (aborted), ``promoted`` (its ReplicaSet is the stable, Healthy),
        or ``stuck``: its progress deadline passed without an abort, so the canary
        stays as it is until someone acts.
        """
        body = self.get()
        status = body.get("status") or {}
        if status.get("abort"):
            return "rolledBack"
        # The status must be of the current spec, and name the version's own pods as the
        # stable: right after a release the old status (stable == current, Healthy)
        # stands beside the new ReplicaSet's first pods.
        observed = str(status.get("observedGeneration")) == str(body["metadata"]["generation"])
        stable = status.get("stableRS")
        hashes = {
            p["metadata"]["labels"].get("rollouts-pod-template-hash")
            for p in self.serving_pods(version)
        }
        if (
            observed
            and stable
            and hashes == {stable}
            and status.get("currentPodHash") == stable
            and status.get("phase") == "Healthy"
        ):
            return "promoted"
        if any(
            c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
            for c in status.get("conditions") or []
        ):
            return "stuck"
        return None

    def serving_pods(self, version: str) -> list[dict[str, Any]]:
        """Pods of ``version`` not being deleted."""
        response: Any = self.core.list_namespaced_pod(
            self.namespace,
            label_selector=f"version={version}",
            _preload_content=False,
            _request_timeout=_API_TIMEOUT,
        )
        items: list[dict[str, Any]] = json.loads(response.data)["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def analysis_runs(self) -> list[dict[str, Any]]:
        """The namespace's AnalysisRuns."""
        body: Any = self.custom.list_namespaced_custom_object(
            GROUP, API_VERSION, self.namespace, "analysisruns", _request_timeout=_API_TIMEOUT
        )
        runs: list[dict[str, Any]] = body["items"]
        return runs


def api_time(stamp: str) -> datetime:
    """An API timestamp (``2026-11-30T15:40:00Z``) as an aware datetime."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
