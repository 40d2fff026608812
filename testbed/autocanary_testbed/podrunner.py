"""The pod runner: plays the kubelet's part for KWOK pods, so traffic in the test bed is real.

KWOK marks pods Running and Ready but runs nothing. For every scheduled pod
matching a label selector, the pod runner starts one process (``testpage``,
or the demo app ``shopapp``, by the image's name) on
127.0.0.1 with the pod's environment (literal values and the usual
``fieldRef``s: pod name, namespace, labels, pod IP), and reports the live ones
as endpoints, the way an endpoints controller feeds kube-proxy.

Like a kubelet it reports failure back, in the pod's status: a pod whose
image it cannot run waits with ``ErrImagePull``, then ``ImagePullBackOff``; a
process that exits is restarted after a growing back-off, its container
waiting in ``CrashLoopBackOff`` meanwhile with ``restartCount`` and the last
exit code (``lastState.terminated``); a process that never serves
``/healthz`` is not Ready. Each time the ``Ready`` condition goes False, so
the Deployment sees an un-Ready pod. A started process makes its pod Ready
only once it serves ``/healthz`` (as a readiness probe would; KWOK says Ready
at once), a restarted one too. A pod being deleted leaves the endpoints first and
is then stopped with SIGTERM, so in-flight requests finish.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import structlog
from kubernetes import client
from kubernetes.client import ApiException

from autocanary_testbed.http_checks import http_ok
from autocanary_testbed.procs import ManagedProcess, free_port

log = structlog.get_logger(__name__)

#: Image names (last path segment, without tag) the runner knows how to run, and the
#: command line each runs (``--host`` and ``--port`` follow).
RUNNABLE_IMAGES: Mapping[str, tuple[str, ...]] = {
    # The runner takes a pod out of the endpoints before stopping it, at once;
    # kube-proxy would need testpage's default 5s.
    "testpage": ("-m", "autocanary.testpage", "--drain-delay", "1s"),
    "autocanary": ("-m", "autocanary.testpage", "--drain-delay", "1s"),
    "shopapp": ("-m", "autocanary_testbed.shopapp"),
}
_START_TIMEOUT_S = 20.0
#: Restart back-off after the n-th exit: 1s, 2s, 4s, ... up to 8s (a kubelet: 10s up to 5m;
#: shorter here so tests see restarts grow within seconds).
_BACKOFF_FIRST_S = 1.0
_BACKOFF_MAX_S = 8.0
#: A kubelet reports ErrImagePull first, then ImagePullBackOff once it backs off.
_PULL_BACKOFF_AFTER_S = 2.0
_API_TIMEOUT = (5.0, 10.0)
_LABEL_REF = re.compile(r"^metadata\.labels\['([^']+)'\]$")


@dataclass(frozen=True)
class Endpoint:
    """A live pod process: where it listens and what it is."""

    pod: str
    namespace: str
    address: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass
class _PodProcess:
    pod: str
    process: ManagedProcess
    port: int
    labels: dict[str, str]
    started: float
    live: bool = False


@dataclass
class _Crashes:
    """A pod whose process exited: how often, how it last ended, when to start it again."""

    restarts: int
    exit_code: int
    retry_at: float


@dataclass
class _Failure:
    """A pod the runner does not run (or no longer): why, and since when (monotonic)."""

    reason: str
    message: str
    since: float


def _image_name(image: str) -> str:
    return image.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]


def runnable(image: str) -> bool:
    """Whether the runner can run this image (by its name; the tag is the version)."""
    return _image_name(image) in RUNNABLE_IMAGES


def pod_env(pod: Mapping[str, Any]) -> dict[str, str]:
    """The first container's environment, resolving the fieldRefs a kubelet would."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    labels = meta.get("labels") or {}
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    env: dict[str, str] = {}
    if status.get("podIP"):
        env["POD_IP"] = str(status["podIP"])
    for var in containers[0].get("env") or []:
        name = var.get("name")
        if not name:
            continue
        if "value" in var:
            env[name] = str(var["value"])
            continue
        path = ((var.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath", "")
        label = _LABEL_REF.match(path)
        if label:
            env[name] = str(labels.get(label.group(1), ""))
        elif path == "metadata.name":
            env[name] = str(meta.get("name", ""))
        elif path == "metadata.namespace":
            env[name] = str(meta.get("namespace", ""))
        elif path == "status.podIP" and status.get("podIP"):
            env[name] = str(status["podIP"])
    return env


def _container_name(pod: Mapping[str, Any]) -> str:
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    return str(containers[0].get("name", "app"))


def _is_ready(pod: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


class PodRunner:
    """Runs a testpage per scheduled pod matching ``selector`` in ``namespace``."""

    def __init__(
        self,
        api_client: client.ApiClient,
        namespace: str,
        selector: str,
        log_dir: Path,
        *,
        on_endpoints: Callable[[list[Endpoint]], None] | None = None,
        poll_s: float = 0.25,
    ) -> None:
        """Prepare; :meth:`start` begins watching. ``on_endpoints`` hears every change."""
        self._core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.selector = selector
        self.log_dir = log_dir
        self._on_endpoints = on_endpoints
        self._poll_s = poll_s
        self._procs: dict[str, _PodProcess] = {}  # by pod UID
        self._failed: dict[str, _Failure] = {}  # pods reported not Ready for good, by UID
        self._crashes: dict[str, _Crashes] = {}  # pods whose process exited, by UID
        self._published: list[Endpoint] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stoppers: list[threading.Thread] = []

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        """Begin watching pods in a background thread."""
        self._thread = threading.Thread(target=self._run, name="pod-runner", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching and stop every process (SIGTERM, then SIGKILL)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            procs = list(self._procs.values())
            self._procs.clear()
        self._publish(None)
        stoppers = [
            threading.Thread(target=p.process.stop, name=f"stop-{p.pod}", daemon=True)
            for p in procs
        ]
        for stopper in stoppers:
            stopper.start()
        for stopper in [*self._stoppers, *stoppers]:
            stopper.join(timeout=30)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def endpoints(self) -> list[Endpoint]:
        """The endpoints published last."""
        with self._lock:
            return list(self._published)

    @property
    def processes(self) -> list[ManagedProcess]:
        """Every pod process currently running (for leak checks)."""
        with self._lock:
            return [p.process for p in self._procs.values()]

    # ---- the loop --------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync_once()
            except Exception as e:  # noqa: BLE001 -- a flaky API read must not end the runner
                log.warning("pod runner round failed", error=str(e))
            self._stop.wait(self._poll_s)

    def sync_once(self) -> None:
        """One round: start, check and stop processes so they match the pods."""
        pods = self._list_pods()
        seen: set[str] = set()
        for pod in pods:
            meta = pod["metadata"]
            uid = meta["uid"]
            if meta.get("deletionTimestamp") or not (pod.get("spec") or {}).get("nodeName"):
                continue
            # KWOK marks a Pending pod Running and Ready; act only after that, or it
            # would overwrite a Ready=False reported for a pod that cannot run.
            if (pod.get("status") or {}).get("phase") != "Running":
                continue
            seen.add(uid)
            failed = self._failed.get(uid)
            if failed is not None:
                self._still_failed(pod, failed)
                continue
            proc = self._procs.get(uid)
            crashes = self._crashes.get(uid)
            if proc is None and crashes is not None and time.monotonic() < crashes.retry_at:
                continue  # backing off
            if proc is None:
                self._launch(pod)
            else:
                self._check(pod, proc)
        for uid in [u for u in self._procs if u not in seen]:
            self._retire(uid)
        known = seen | {p["metadata"]["uid"] for p in pods}
        self._failed = {u: f for u, f in self._failed.items() if u in known}
        self._crashes = {u: c for u, c in self._crashes.items() if u in known}
        self._publish(pods)

    def _still_failed(self, pod: Mapping[str, Any], failed: _Failure) -> None:
        """Keep a failed pod's status as a kubelet would: not Ready, pulls backing off."""
        if failed.reason == "ErrImagePull" and (
            time.monotonic() - failed.since >= _PULL_BACKOFF_AFTER_S
        ):
            failed.reason = "ImagePullBackOff"
            failed.message = f"Back-off pulling image: {failed.message}"
            self._report(pod, failed.reason, failed.message, waiting=failed.reason)
        elif _is_ready(pod):
            # Reported not Ready, yet Ready again: say it again, as a kubelet would.
            waiting = failed.reason if "Image" in failed.reason else None
            self._report(pod, failed.reason, failed.message, waiting=waiting)

    def _list_pods(self) -> list[dict[str, Any]]:
        response: Any = self._core.list_namespaced_pod(
            self.namespace,
            label_selector=self.selector,
            _preload_content=False,
            _request_timeout=_API_TIMEOUT,
        )
        items: list[dict[str, Any]] = json.loads(response.data)["items"]
        return items

    def _launch(self, pod: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        containers = pod["spec"].get("containers") or [{}]
        image = str(containers[0].get("image", ""))
        if not runnable(image):
            message = f"the pod runner cannot run image {image!r}"
            self._failed[meta["uid"]] = _Failure("ErrImagePull", message, time.monotonic())
            self._report(pod, "ErrImagePull", message, waiting="ErrImagePull")
            return
        port = free_port()
        name = f"pod-{meta['name']}"
        process = ManagedProcess.start(
            name,
            [
                sys.executable,
                *RUNNABLE_IMAGES[_image_name(image)],
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            log_dir=self.log_dir,
            env=pod_env(pod),
        )
        with self._lock:
            self._procs[meta["uid"]] = _PodProcess(
                meta["name"], process, port, dict(meta.get("labels") or {}), time.monotonic()
            )
        log.info("pod process started", pod=meta["name"], port=port, pid=process.pid)
        # KWOK called the pod Ready before anything ran; a kubelet says Ready only once the
        # readiness probe passes (a slow-starting app takes seconds).
        self._report(pod, "ContainersNotReady", "readiness probe has not passed yet")

    def _check(self, pod: Mapping[str, Any], proc: _PodProcess) -> None:
        uid = pod["metadata"]["uid"]
        if not proc.process.is_running():
            with self._lock:
                self._procs.pop(uid, None)
            code = proc.process.returncode
            proc.process.stop()  # reaps it (it has exited)
            before = self._crashes.get(uid)
            restarts = before.restarts + 1 if before is not None else 1
            backoff = min(_BACKOFF_FIRST_S * 2 ** (restarts - 1), _BACKOFF_MAX_S)
            self._crashes[uid] = _Crashes(
                restarts, code if code is not None else -1, time.monotonic() + backoff
            )
            container = _container_name(pod)
            self._report(
                pod,
                "ContainersNotReady",
                f"testpage exited with status {code}: {proc.process.log_tail(5)}",
                waiting="CrashLoopBackOff",
                waiting_message=(
                    f"back-off {backoff:g}s restarting failed container={container} "
                    f"pod={pod['metadata']['name']}"
                ),
            )
            return
        if not proc.live:
            if http_ok(f"http://127.0.0.1:{proc.port}/healthz"):
                proc.live = True
                log.info("pod process live", pod=proc.pod, port=proc.port)
                # Serving: Ready (after a restart too, its restarts still counted).
                self._report(pod, "", "", ready=True)
            elif time.monotonic() - proc.started > _START_TIMEOUT_S:
                with self._lock:
                    self._procs.pop(uid, None)
                proc.process.stop()
                message = f"/healthz not answering after {_START_TIMEOUT_S}s"
                self._failed[uid] = _Failure("NeverHealthy", message, time.monotonic())
                self._report(pod, "NeverHealthy", message)

    def _retire(self, uid: str) -> None:
        with self._lock:
            proc = self._procs.pop(uid)
        # Leave the endpoints before stopping, as the endpoints controller does on deletion.
        self._publish(None)
        log.info("pod gone; stopping its process", pod=proc.pod, pid=proc.process.pid)
        stopper = threading.Thread(target=proc.process.stop, name=f"stop-{proc.pod}", daemon=True)
        stopper.start()
        self._stoppers = [t for t in self._stoppers if t.is_alive()] + [stopper]

    def _report(
        self,
        pod: Mapping[str, Any],
        reason: str,
        message: str,
        *,
        ready: bool = False,
        waiting: str | None = None,
        waiting_message: str | None = None,
    ) -> None:
        """Write the pod's Ready conditions and its container's status, as a kubelet would."""
        meta = pod["metadata"]
        uid = meta["uid"]
        if ready:
            log.info("pod ready again", pod=meta["name"])
        else:
            log.warning("pod not ready", pod=meta["name"], reason=reason, message=message)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        condition: dict[str, str] = {"status": "True" if ready else "False"}
        if not ready:
            condition.update(reason=reason, message=message[:500])
        crashes = self._crashes.get(uid)
        container: dict[str, Any] = {
            "name": _container_name(pod),
            "image": str(((pod.get("spec") or {}).get("containers") or [{}])[0].get("image", "")),
            "imageID": "",
            "ready": ready,
            "restartCount": crashes.restarts if crashes is not None else 0,
            "started": ready,
        }
        if waiting is not None:
            container["state"] = {
                "waiting": {"reason": waiting, "message": (waiting_message or message)[:500]}
            }
        else:
            container["state"] = {"running": {"startedAt": now}}
        if crashes is not None:
            container["lastState"] = {
                "terminated": {
                    "exitCode": crashes.exit_code,
                    "reason": "Error",
                    "startedAt": now,
                    "finishedAt": now,
                }
            }
        try:
            self._core.patch_namespaced_pod_status(
                meta["name"],
                self.namespace,
                {
                    "status": {
                        "conditions": [
                            {"type": "Ready", "lastTransitionTime": now, **condition},
                            {"type": "ContainersReady", "lastTransitionTime": now, **condition},
                        ],
                        "containerStatuses": [container],
                    }
                },
                _request_timeout=_API_TIMEOUT,
            )
        except ApiException as e:
            if e.status != 404:
                log.warning("could not report the pod's status", pod=meta["name"], error=str(e))

    def _publish(self, pods: Iterable[Mapping[str, Any]] | None) -> None:
        ready_uids: set[str] | None = None
        if pods is not None:
            ready_uids = {p["metadata"]["uid"] for p in pods if _is_ready(p)}
        with self._lock:
            endpoints = sorted(
                (
                    Endpoint(p.pod, self.namespace, f"127.0.0.1:{p.port}", p.labels)
                    for uid, p in self._procs.items()
                    if p.live and (ready_uids is None or uid in ready_uids)
                ),
                key=lambda e: e.pod,
            )
            changed = endpoints != self._published
            self._published = endpoints
        if changed and self._on_endpoints is not None:
            self._on_endpoints(endpoints)
