"""The pod runner: the kubelet of a namespace's KWOK pods, so traffic in the test bed is real.

KWOK schedules pods, gives them IPs and marks them Running, but runs nothing.
In a namespace created with ``pod_runner=True`` the pod runner does the rest
of a kubelet's job, and tells the cluster only through the pod's status:

- it starts the container's command (``autocanary <args>``) with the pod's
  environment (literal values and the usual ``fieldRef``s), listening on the
  pod's IP (its loopback twin, see :mod:`autocanary_testbed.network`) and the
  container's declared port;
- as the readiness prober, it sets the pod's ``Ready`` condition from the
  container's ``readinessProbe`` (``httpGet``; ``periodSeconds``,
  ``failureThreshold``, ``successThreshold`` honoured), or once the process
  runs when there is none;
- it reports failure as a kubelet does, in the container's status: an image
  it cannot run waits with ``ErrImagePull``, then ``ImagePullBackOff``; a
  process that exits is restarted after a growing back-off, its container
  waiting in ``CrashLoopBackOff`` meanwhile, with ``restartCount`` and the
  last exit code (``lastState.terminated``);
- when the pod is deleted it sends SIGTERM, waits for the process to exit
  (SIGKILL at the end of the grace period) and then removes the pod, so the
  pod is Terminating, and its EndpointSlice entry says so, while it drains.

Which pods are in a Service, and where traffic and scrapes go, is then up to
the cluster: the endpoint-slice controller, the Service proxy and Prometheus's
service discovery all read the API, never the runner.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import structlog
from kubernetes import client
from kubernetes.client import ApiException

from autocanary_testbed.http_checks import http_ok
from autocanary_testbed.kwok_stages import RUNNER_ANNOTATION
from autocanary_testbed.network import PodNetwork
from autocanary_testbed.procs import ManagedProcess

log = structlog.get_logger(__name__)

#: Image names (last path segment, without tag) the runner knows how to run. The
#: ``autocanary`` image's entry point is the CLI: its args name the program.
RUNNABLE_IMAGES = frozenset({"testpage", "autocanary", "shopapp"})
#: Subcommands of the ``autocanary`` image the runner can run as a pod (they take ``--host``).
RUNNABLE_COMMANDS = frozenset({"testpage"})
_MODULES = {"testpage": "autocanary.apps.testpage", "shopapp": "autocanary_testbed.shopapp"}
_API_TIMEOUT = (5.0, 10.0)
_LABEL_REF = re.compile(r"^metadata\.labels\['([^']+)'\]$")
_DEFAULT_GRACE_S = 30.0
#: Restart back-off after the n-th exit: 1s, 2s, 4s, ... up to 8s (a kubelet: 10s up to 5m;
#: shorter here so tests see restarts grow within seconds).
_BACKOFF_FIRST_S = 1.0
_BACKOFF_MAX_S = 8.0
#: A kubelet reports ErrImagePull first, then ImagePullBackOff once it backs off.
_PULL_BACKOFF_AFTER_S = 2.0


@dataclass(frozen=True)
class RunningPod:
    """A pod the runner runs: name, labels, the address it listens on, whether it is Ready."""

    name: str
    labels: Mapping[str, str]
    address: str
    ready: bool


@dataclass(frozen=True)
class _Probe:
    path: str
    port: int
    period_s: float
    failure_threshold: int
    success_threshold: int
    initial_delay_s: float
    timeout_s: float


@dataclass
class _Crashes:
    """A pod whose process exited: how often, how it last ended, when to start it again."""

    restarts: int
    exit_code: int
    retry_at: float


@dataclass
class _Failure:
    """A pod the runner cannot run: why, and since when (monotonic)."""

    reason: str
    message: str
    since: float


@dataclass
class _Pod:
    name: str
    labels: dict[str, str]
    host_ip: str
    port: int
    process: ManagedProcess
    probe: _Probe | None
    next_probe: float
    ready: bool = False
    successes: int = 0
    failures: int = 0
    terminating: bool = False
    stopper: threading.Thread | None = field(default=None, repr=False)


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


def _port_number(container: Mapping[str, Any], port: Any) -> int | None:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    return None


def _readiness_probe(container: Mapping[str, Any]) -> _Probe | str | None:
    """The container's HTTP readiness probe; a message when it is one the runner cannot do."""
    spec = container.get("readinessProbe")
    if not spec:
        return None
    get = spec.get("httpGet")
    if not get:
        return "the pod runner only does httpGet readiness probes"
    port = _port_number(container, get.get("port"))
    if port is None:
        return f"readinessProbe port {get.get('port')!r} is not a declared container port"
    return _Probe(
        path=str(get.get("path") or "/"),
        port=port,
        period_s=float(spec.get("periodSeconds") or 10),
        failure_threshold=int(spec.get("failureThreshold") or 3),
        success_threshold=int(spec.get("successThreshold") or 1),
        initial_delay_s=float(spec.get("initialDelaySeconds") or 0),
        timeout_s=float(spec.get("timeoutSeconds") or 1),
    )


class PodRunner:
    """Runs every pod of ``namespace`` (created with ``pod_runner=True``) as a local process."""

    def __init__(
        self,
        api_client: client.ApiClient,
        network: PodNetwork,
        namespace: str,
        log_dir: Path,
        *,
        poll_s: float = 0.2,
    ) -> None:
        """Prepare; :meth:`start` begins watching."""
        self._core = client.CoreV1Api(api_client)
        self.network = network
        self.namespace = namespace
        self.log_dir = log_dir
        self._poll_s = poll_s
        self._pods: dict[str, _Pod] = {}  # by pod UID
        self._failed: dict[str, _Failure] = {}  # pods it cannot run, by UID
        self._crashes: dict[str, _Crashes] = {}  # pods whose process exited, by UID
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._orphans: list[tuple[str, threading.Thread]] = []  # (address, stopper)

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        """Begin watching pods in a background thread."""
        self._thread = threading.Thread(target=self._run, name="pod-runner", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching and stop every process (SIGTERM, then SIGKILL); pods stay as they are."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            pods = list(self._pods.values())
            self._pods.clear()
        stoppers = [
            threading.Thread(target=p.process.stop, name=f"stop-{p.name}", daemon=True)
            for p in pods
        ]
        for stopper in stoppers:
            stopper.start()
        waiting = [p.stopper for p in pods if p.stopper is not None]
        for stopper in [*stoppers, *waiting, *(t for _, t in self._orphans)]:
            stopper.join(timeout=40)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def pods(self) -> list[RunningPod]:
        """The pods whose process runs now, by name."""
        with self._lock:
            return sorted(
                (
                    RunningPod(p.name, dict(p.labels), f"{p.host_ip}:{p.port}", p.ready)
                    for p in self._pods.values()
                    if p.process.is_running()
                ),
                key=lambda p: p.name,
            )

    @property
    def processes(self) -> list[ManagedProcess]:
        """Every pod process currently known (for leak checks)."""
        with self._lock:
            return [p.process for p in self._pods.values()]

    # ---- the loop --------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync_once()
            except Exception as e:  # noqa: BLE001 -- a flaky API read must not end the runner
                log.warning("pod runner round failed", error=str(e))
            self._stop.wait(self._poll_s)

    def sync_once(self) -> None:
        """One round: start, probe and stop processes so they match the pods."""
        pods = self._list_pods()
        seen = {p["metadata"]["uid"] for p in pods}
        for pod in pods:
            uid = pod["metadata"]["uid"]
            if pod["metadata"].get("deletionTimestamp"):
                self._terminate(pod)
                continue
            status = pod.get("status") or {}
            # KWOK makes a scheduled pod Running with its IP; only then is there a sandbox.
            if status.get("phase") != "Running" or not status.get("podIP"):
                continue
            failed = self._failed.get(uid)
            if failed is not None:
                self._still_failed(pod, failed)
                continue
            known = self._pods.get(uid)
            crashes = self._crashes.get(uid)
            if known is None and crashes is not None and time.monotonic() < crashes.retry_at:
                continue  # backing off
            if known is None:
                self._launch(pod)
            elif not known.terminating:
                self._check(pod, known)
        for uid in [u for u in self._pods if u not in seen]:
            self._orphan(uid)
        self._failed = {u: f for u, f in self._failed.items() if u in seen}
        self._crashes = {u: c for u, c in self._crashes.items() if u in seen}

    def _still_failed(self, pod: Mapping[str, Any], failed: _Failure) -> None:
        """After a while a kubelet says it backs off pulling an image."""
        if failed.reason == "ErrImagePull" and (
            time.monotonic() - failed.since >= _PULL_BACKOFF_AFTER_S
        ):
            failed.reason = "ImagePullBackOff"
            failed.message = f"Back-off pulling image: {failed.message}"
            self._report(pod, False, failed.reason, failed.message, waiting=failed.reason)

    def _list_pods(self) -> list[dict[str, Any]]:
        response: Any = self._core.list_namespaced_pod(
            self.namespace, _preload_content=False, _request_timeout=_API_TIMEOUT
        )
        items: list[dict[str, Any]] = json.loads(response.data)["items"]
        # Pods created before the namespace was the runner's are KWOK's alone.
        return [p for p in items if RUNNER_ANNOTATION in (p["metadata"].get("annotations") or {})]

    def _launch(self, pod: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        container = (pod["spec"].get("containers") or [{}])[0]
        image = str(container.get("image", ""))
        args = [str(a) for a in container.get("args") or []]
        if not runnable(image):
            message = f"the pod runner cannot run image {image!r}"
            self._fail(pod, "ErrImagePull", message, waiting="ErrImagePull")
            return
        ports = container.get("ports") or []
        if _image_name(image) == "shopapp" and ports:
            # The demo app's image runs the app itself, on its declared port.
            args = ["shopapp", "--port", str(ports[0]["containerPort"])]
        elif not args or args[0] not in RUNNABLE_COMMANDS:
            self._fail(
                pod,
                "CreateContainerError",
                f"the pod runner runs `autocanary {'|'.join(sorted(RUNNABLE_COMMANDS))} ...`, "
                f"not args {args!r}",
            )
            return
        if not ports:
            self._fail(pod, "CreateContainerError", "the container declares no containerPort")
            return
        probe = _readiness_probe(container)
        if isinstance(probe, str):
            self._fail(pod, "CreateContainerError", probe)
            return
        host_ip = self.network.host_ip(pod["status"]["podIP"])
        port = int(ports[0]["containerPort"])
        if self._address_busy(f"{host_ip}:{port}"):
            return  # a process of a pod that had this IP is still draining; next round
        process = ManagedProcess.start(
            f"pod-{meta['name']}",
            # `autocanary testpage ...` hands over to this module; starting it directly
            # spares every pod the CLI's imports.
            [sys.executable, "-m", _MODULES[args[0]], *args[1:], "--host", host_ip],
            log_dir=self.log_dir,
            env=pod_env(pod),
        )
        now = time.monotonic()
        entry = _Pod(
            name=meta["name"],
            labels=dict(meta.get("labels") or {}),
            host_ip=host_ip,
            port=port,
            process=process,
            probe=probe,
            next_probe=now + (probe.initial_delay_s if probe else 0.0),
        )
        with self._lock:
            self._pods[meta["uid"]] = entry
        log.info("pod process started", pod=meta["name"], address=f"{host_ip}:{port}")

    def _check(self, pod: Mapping[str, Any], entry: _Pod) -> None:
        if not entry.process.is_running():
            self._crashed(pod, entry)
            return
        now = time.monotonic()
        if now < entry.next_probe:
            return
        if entry.probe is None:
            passed, threshold = True, 1
        else:
            entry.next_probe = now + entry.probe.period_s
            url = f"http://{entry.host_ip}:{entry.probe.port}{entry.probe.path}"
            passed = http_ok(url)
            threshold = entry.probe.success_threshold if passed else entry.probe.failure_threshold
        if passed:
            entry.successes, entry.failures = entry.successes + 1, 0
        else:
            entry.successes, entry.failures = 0, entry.failures + 1
        streak = entry.successes if passed else entry.failures
        # Not Ready from the start: the first failures only keep it so.
        if passed != entry.ready and streak >= threshold:
            entry.ready = passed
            self._report(pod, passed, "" if passed else "ReadinessProbeFailed", "")
            log.info("pod readiness changed", pod=entry.name, ready=passed)

    def _crashed(self, pod: Mapping[str, Any], entry: _Pod) -> None:
        """The process exited: not Ready, restarted after a back-off that grows."""
        uid = pod["metadata"]["uid"]
        with self._lock:
            self._pods.pop(uid, None)
        code = entry.process.returncode
        entry.process.stop()  # reaps it (it has exited)
        before = self._crashes.get(uid)
        restarts = before.restarts + 1 if before is not None else 1
        backoff = min(_BACKOFF_FIRST_S * 2 ** (restarts - 1), _BACKOFF_MAX_S)
        self._crashes[uid] = _Crashes(
            restarts, code if code is not None else -1, time.monotonic() + backoff
        )
        container = _container_name(pod)
        self._report(
            pod,
            False,
            "ContainersNotReady",
            f"{container} exited with status {code}: {entry.process.log_tail(5)}",
            waiting="CrashLoopBackOff",
            waiting_message=(
                f"back-off {backoff:g}s restarting failed container={container} "
                f"pod={pod['metadata']['name']}"
            ),
        )

    def _terminate(self, pod: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        entry = self._pods.get(uid)
        if entry is None:
            # Nothing runs (never started, or failed): the kubelet removes it at once.
            self._delete(meta["name"], uid)
            return
        if entry.terminating:
            if entry.process.is_running():
                self._check_while_terminating(pod, entry)
            return
        entry.terminating = True
        grace = meta.get("deletionGracePeriodSeconds")
        grace_s = float(grace) if grace is not None else _DEFAULT_GRACE_S

        def finish() -> None:
            entry.process.stop(grace_s)
            with self._lock:
                self._pods.pop(uid, None)
            self._delete(meta["name"], uid)
            log.info("pod process stopped; pod removed", pod=meta["name"])

        log.info("pod terminating; SIGTERM to its process", pod=meta["name"], grace_s=grace_s)
        entry.stopper = threading.Thread(target=finish, name=f"stop-{meta['name']}", daemon=True)
        entry.stopper.start()

    def _check_while_terminating(self, pod: Mapping[str, Any], entry: _Pod) -> None:
        # The kubelet keeps probing a terminating pod: a draining app that fails its
        # readiness probe stops being "serving" in its EndpointSlice.
        now = time.monotonic()
        if entry.probe is None or now < entry.next_probe:
            return
        entry.next_probe = now + entry.probe.period_s
        url = f"http://{entry.host_ip}:{entry.probe.port}{entry.probe.path}"
        if entry.ready and not http_ok(url):
            entry.ready = False
            self._report(pod, False, "ReadinessProbeFailed", "terminating")

    def _orphan(self, uid: str) -> None:
        """Stop the process of a pod removed without termination (force-deleted)."""
        with self._lock:
            entry = self._pods.pop(uid)
        if entry.stopper is not None:
            return  # being stopped already; its thread removes nothing more
        log.info("pod gone; stopping its process", pod=entry.name)
        stopper = threading.Thread(
            target=entry.process.stop, name=f"stop-{entry.name}", daemon=True
        )
        stopper.start()
        self._orphans = [(a, t) for a, t in self._orphans if t.is_alive()]
        self._orphans.append((f"{entry.host_ip}:{entry.port}", stopper))

    def _address_busy(self, address: str) -> bool:
        with self._lock:
            running = {f"{p.host_ip}:{p.port}" for p in self._pods.values()}
        return address in running or any(a == address and t.is_alive() for a, t in self._orphans)

    def _delete(self, name: str, uid: str) -> None:
        try:
            self._core.delete_namespaced_pod(
                name,
                self.namespace,
                grace_period_seconds=0,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)
                ),
                _request_timeout=_API_TIMEOUT,
            )
        except ApiException as e:
            if e.status not in (404, 409):
                log.warning("could not remove terminated pod", pod=name, error=str(e))

    def _fail(
        self, pod: Mapping[str, Any], reason: str, message: str, *, waiting: str | None = None
    ) -> None:
        meta = pod["metadata"]
        self._failed[meta["uid"]] = _Failure(reason, message, time.monotonic())
        log.warning("pod not ready", pod=meta["name"], reason=reason, message=message)
        self._report(pod, False, reason, message, waiting=waiting or reason)

    def _report(
        self,
        pod: Mapping[str, Any],
        ready: bool,
        reason: str,
        message: str,
        *,
        waiting: str | None = None,
        waiting_message: str | None = None,
    ) -> None:
        """Write the pod's Ready conditions and its container's status, as a kubelet would."""
        meta = pod["metadata"]
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        condition: dict[str, str] = {"status": "True" if ready else "False"}
        if reason:
            condition["reason"] = reason
        if message:
            condition["message"] = message[:500]
        spec = ((pod.get("spec") or {}).get("containers") or [{}])[0]
        crashes = self._crashes.get(meta["uid"])
        container: dict[str, Any] = {
            "name": str(spec.get("name", "")),
            "image": str(spec.get("image", "")),
            "imageID": "",
            "ready": ready,
            "restartCount": crashes.restarts if crashes is not None else 0,
            "started": waiting is None,
            "state": (
                {"waiting": {"reason": waiting, "message": (waiting_message or message)[:500]}}
                if waiting is not None
                else {"running": {"startedAt": now}}
            ),
        }
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
                log.warning("could not report pod status", pod=meta["name"], error=str(e))


def _container_name(pod: Mapping[str, Any]) -> str:
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    return str(containers[0].get("name", "app"))
