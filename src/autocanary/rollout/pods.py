"""The canary's pods as the kubelet reports them, and when they fail a step at once.

Pure functions; the engine reads the pods
(:meth:`autocanary.adapters.kubernetes.KubeClient.list_pods`).
A Deployment's counts say only "not Ready": a container in ``CrashLoopBackOff``
or an image that cannot be pulled will not get better by waiting for
``progressDeadline``, so the step fails as soon as the kubelet says so, with
the pod and the reason in the rollback's message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from autocanary.rollout.revision import version_of

#: Waiting reasons that do not heal by themselves: the kubelet backs off and retries
#: for ever (``ErrImagePull`` turns into ``ImagePullBackOff`` after its first retry).
FATAL_WAITING_REASONS = frozenset(
    {"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "InvalidImageName"}
)


@dataclass(frozen=True)
class ContainerView:
    """One container's status: why it waits, how often it restarted, how it last ended."""

    name: str
    ready: bool = False
    restarts: int = 0
    waiting_reason: str | None = None
    waiting_message: str | None = None
    last_exit_code: int | None = None


@dataclass(frozen=True)
class PodView:
    """One pod: its name, labels, readiness and containers."""

    name: str
    labels: Mapping[str, str]
    version: str
    ready: bool
    containers: tuple[ContainerView, ...] = ()
    deleting: bool = False

    @property
    def restarts(self) -> int:
        """Restarts of all its containers together."""
        return sum(c.restarts for c in self.containers)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], version_label: str) -> PodView:
        """Build from the API's JSON (missing status fields read as "nothing reported yet").

        The version is read as from a pod template: ``version_label``, else the image tag.
        """
        meta = obj.get("metadata") or {}
        status = obj.get("status") or {}
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        containers = []
        statuses = [
            *(status.get("initContainerStatuses") or []),
            *(status.get("containerStatuses") or []),
        ]
        for c in statuses:
            waiting = (c.get("state") or {}).get("waiting") or {}
            terminated = (c.get("lastState") or {}).get("terminated") or {}
            containers.append(
                ContainerView(
                    name=str(c.get("name", "")),
                    ready=bool(c.get("ready")),
                    restarts=int(c.get("restartCount") or 0),
                    waiting_reason=waiting.get("reason"),
                    waiting_message=waiting.get("message"),
                    last_exit_code=(
                        int(terminated["exitCode"]) if "exitCode" in terminated else None
                    ),
                )
            )
        return cls(
            name=str(meta.get("name", "")),
            labels=dict(meta.get("labels") or {}),
            version=version_of(dict(obj), version_label),
            ready=ready,
            containers=tuple(containers),
            deleting=bool(meta.get("deletionTimestamp")),
        )


def failure(pods: Iterable[PodView], max_restarts: int | None) -> str | None:
    """Why these (canary) pods fail the step now, naming the pod and reason; None if they don't.

    A container waiting for a reason in :data:`FATAL_WAITING_REASONS`, or a pod
    whose containers restarted more than ``max_restarts`` times (None: no limit).
    Pods being deleted are not judged: they are on their way out.
    """
    for pod in sorted(pods, key=lambda p: p.name):
        if pod.deleting:
            continue
        for c in pod.containers:
            if c.waiting_reason in FATAL_WAITING_REASONS:
                return f"canary pod {pod.name}: container {c.name} {_describe(c)}"
        if max_restarts is not None and pod.restarts > max_restarts:
            worst = max(pod.containers, key=lambda c: c.restarts)
            return (
                f"canary pod {pod.name}: restarted {pod.restarts} times (maxRestarts "
                f"{max_restarts}); container {worst.name} {_describe(worst)}"
            )
    return None


def _describe(c: ContainerView) -> str:
    parts = [c.waiting_reason or ("ready" if c.ready else "not ready")]
    details = []
    if c.restarts:
        details.append(f"restarted {c.restarts} times")
    if c.last_exit_code is not None:
        details.append(f"last exit code {c.last_exit_code}")
    if c.waiting_message:
        details.append(c.waiting_message[:200])
    if details:
        parts.append(f"({'; '.join(details)})")
    return " ".join(parts)
