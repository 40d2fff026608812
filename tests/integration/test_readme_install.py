"""The README's install steps, executed in order against the test bed's API server.

The cluster block of "Installing in a cluster" is run line by line with the
real kubectl, exactly as written (the Prometheus Operator's two resource kinds
are registered first, as stand-ins for its CRDs, so its step applies too).
The image is then replaced by a local process, as in the rest of the suite:
`autocanary status` reads the config the steps installed from the cluster, and
`autocanary run` runs with that config as the ServiceAccount the steps
created (a real token), so its start-up checks say whether the installed RBAC
and Secret give it everything it needs.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from autocanary_testbed.controlplane import ControlPlane
from autocanary_testbed.procs import free_port
from autocanary_testbed.waiting import wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent
#: The namespaces the README's steps create, as written.
NAMESPACES = ("demo", "autocanary")


def cluster_steps() -> list[list[str]]:
    """The commands of the README's cluster block, split as a shell would."""
    section = README.split("## Installing in a cluster", 1)[1]
    block = re.search(r"\*\*3\. The cluster\*\*.*?```sh\n(.*?)```", section, flags=re.S)
    assert block, "the README's install section has its cluster block"
    return [
        shlex.split(line, comments=True) for line in block.group(1).splitlines() if line.strip()
    ]


def operator_kinds() -> list[dict[str, Any]]:
    """PodMonitor and PrometheusRule as the API server must know them for `kubectl apply`."""
    kinds = []
    for kind, plural in (("PodMonitor", "podmonitors"), ("PrometheusRule", "prometheusrules")):
        kinds.append(
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": f"{plural}.monitoring.coreos.com"},
                "spec": {
                    "group": "monitoring.coreos.com",
                    "scope": "Namespaced",
                    "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                    "versions": [
                        {
                            "name": "v1",
                            "served": True,
                            "storage": True,
                            "schema": {
                                "openAPIV3Schema": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                }
                            },
                        }
                    ],
                },
            }
        )
    return kinds


@pytest.fixture
def installed(control_plane: ControlPlane, tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AUTOCANARY_", "KUBE"))},
        "KUBECONFIG": str(control_plane.kubeconfig_path),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(tmp_path),
    }
    api = client.ApiextensionsV1Api(control_plane.api_client())
    for crd in operator_kinds():
        api.create_custom_resource_definition(crd)
    try:
        yield env
    finally:
        for name in NAMESPACES:
            control_plane.delete_namespace(name)
        for crd in operator_kinds():
            api.delete_custom_resource_definition(crd["metadata"]["name"])


def test_the_readme_install_steps_work_as_written(
    installed: dict[str, str], control_plane: ControlPlane, tmp_path: Path
) -> None:
    env = installed
    steps = cluster_steps()
    assert [s[:2] for s in steps] == [
        ["kubectl", "apply"],
        ["kubectl", "create"],
        ["kubectl", "-n"],
        ["kubectl", "apply"],
        ["kubectl", "apply"],
    ]
    for argv in steps:
        if argv[:3] == ["kubectl", "apply", "-k"] and argv[3] == "deploy/prometheus":
            # The Operator's kinds must be served before this step: wait for them.
            wait_until(
                lambda: _kubectl(env, "get", "podmonitors", "-A").returncode == 0,
                timeout=60,
                what="the PodMonitor kind served",
            )
        result = _kubectl(env, *argv[1:])
        assert result.returncode == 0, f"README step failed: {shlex.join(argv)}\n{result.stderr}"

    # The CLI finds the installed config in the cluster: no local file, no flags.
    def status() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "autocanary"), "status", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=env,
            cwd=tmp_path,
        )

    wait_until(lambda: status().returncode == 0, timeout=120, what="both demo Deployments")
    rows = json.loads(status().stdout)
    assert [(r["rollout"], r["namespace"], r["phase"]) for r in rows] == [
        ("testpage", "demo", "idle")
    ]

    # The daemon, as the ServiceAccount the steps created, with the config they installed.
    token = _kubectl(env, "-n", "autocanary", "create", "token", "autocanary").stdout.strip()
    assert token
    kubeconfig = tmp_path / "daemon.kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "bed",
                        "cluster": {
                            "server": control_plane.server_url,
                            "certificate-authority": str(control_plane.ca_cert_path),
                        },
                    }
                ],
                "users": [{"name": "sa", "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": "bed", "user": "sa"}}],
                "current-context": "sa",
            }
        )
    )
    config_map = json.loads(
        _kubectl(env, "-n", "autocanary", "get", "configmap", "-o", "json").stdout
    )
    (installed_config,) = [
        cm["data"]["config.yaml"]
        for cm in config_map["items"]
        if "config.yaml" in cm.get("data", {})
    ]
    # Only what a pod gets from the cluster differs: its address, and no DNS for Prometheus.
    # (Edited as text: PyYAML would read the sinks' `on:` keys as booleans.)
    prometheus_url = f"http://127.0.0.1:{free_port()}"
    text, listens = re.subn(
        r"(?m)^  listen: .*$", f"  listen: 127.0.0.1:{free_port()}", installed_config
    )
    text, urls = re.subn(r"(?m)^  url: http://prometheus\S*", f"  url: {prometheus_url}", text)
    assert (listens, urls) == (1, 1)
    local = tmp_path / "config.yaml"
    local.write_text(text)
    secret = json.loads(
        _kubectl(env, "-n", "autocanary", "get", "secret", "autocanary-slack", "-o", "json").stdout
    )
    log = tmp_path / "daemon.log"
    with (
        log.open("w") as out,
        subprocess.Popen(
            [str(BIN / "autocanary"), "run", "-c", str(local), "--kubeconfig", str(kubeconfig)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={
                **env,
                "POD_NAME": "autocanary-local",
                "POD_NAMESPACE": "autocanary",
                "SLACK_WEBHOOK_URL": base64.b64decode(secret["data"]["url"]).decode(),
            },
        ) as daemon,
    ):
        try:
            wait_until(
                lambda: "start-up checks" in log.read_text(),
                timeout=120,
                what="the daemon's start-up checks",
            )
        finally:
            daemon.terminate()
            daemon.wait(timeout=60)
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    missing = [e for e in events if e.get("event") == "missing requirement"]
    # Prometheus is not installed by these steps; the RBAC and the Secret are complete.
    assert [(e["requirement"], e["subject"]) for e in missing] == [
        ("prometheus", prometheus_url)
    ], missing


def _kubectl(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "kubectl"), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
        cwd=REPO,
    )
