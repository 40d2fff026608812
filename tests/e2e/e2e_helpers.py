"""Small readers shared by the end-to-end scenarios."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from kubernetes import client

from autocanary_testbed.apps import daemon_command
from autocanary_testbed.controlplane import ControlPlane
from autocanary_testbed.http_checks import http_ok
from autocanary_testbed.procs import ManagedProcess, ProcessGroup
from autocanary_testbed.stack import CanaryStack

StackFactory = Callable[..., CanaryStack]


def our_reasons(stack: CanaryStack) -> list[str]:
    """Reasons of the Events autocanary recorded on the canary, oldest first."""
    return [
        e["reason"]
        for e in stack.events()
        if (e.get("source") or {}).get("component") == "autocanary"
    ]


def told_reasons(stack: CanaryStack, timeout: float = 60) -> list[str]:
    """Reasons of autocanary's Events once every transition written so far is told.

    The daemon writes a transition into the state as a pending notice first and
    records its Event right after (or, after a crash, in a later write): a phase
    read as settled can come moments before its Event exists.
    """
    stack.wait_for(lambda s: not s.pending, timeout, "every pending transition told")
    return our_reasons(stack)


def stable_container(stack: CanaryStack) -> dict[str, Any]:
    """The stable Deployment's first container."""
    container: dict[str, Any] = stack.deployment(stack.stable_name)["spec"]["template"]["spec"][
        "containers"
    ][0]
    return container


def stable_labels(stack: CanaryStack) -> dict[str, str]:
    """The stable Deployment's pod template labels."""
    labels: dict[str, str] = stack.deployment(stack.stable_name)["spec"]["template"]["metadata"][
        "labels"
    ]
    return labels


def autocanary_events(core: client.CoreV1Api, namespace: str, name: str) -> list[dict[str, Any]]:
    """The Events autocanary recorded about object ``name`` (any kind) in ``namespace``."""
    response: Any = core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}", _preload_content=False
    )
    items: list[dict[str, Any]] = json.loads(response.data)["items"]
    return [e for e in items if (e.get("source") or {}).get("component") == "autocanary"]


def daemon_sample(port: int, sample: str) -> float:
    """One sample of the daemon's /metrics (name and labels as exposed), 0 when absent."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10, trust_env=False).text
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def start_daemon(
    group: ProcessGroup,
    control_plane: ControlPlane,
    workdir: Path,
    config: dict[str, Any],
    port: int,
) -> ManagedProcess:
    """Run ``autocanary run`` on ``config`` (written to workdir) until it serves /healthz."""
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    daemon = group.start("daemon", daemon_command(path, control_plane.kubeconfig_path, "daemon-a"))
    daemon.wait_ready(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), 60, "serving /healthz")
    return daemon
