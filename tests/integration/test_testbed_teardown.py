"""Tearing the test bed down leaves no process and no work directory behind, also when
start-up fails half-way, and also for the ``python -m autocanary_testbed up`` command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes import client, config

from autocanary_testbed.controlplane import ControlPlane, find_binaries
from autocanary_testbed.errors import HarnessError
from autocanary_testbed.monitoring import AlertmanagerServer, PrometheusServer
from autocanary_testbed.procs import pid_alive

pytestmark = pytest.mark.integration


def live_processes_mentioning(text: str) -> list[int]:
    """PIDs of live processes whose command line contains ``text`` (e.g. a work directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if text in cmdline and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def test_control_plane_stop_ends_every_process_and_removes_the_workdir(
    tmp_workdir: Path,
) -> None:
    plane = ControlPlane()
    plane.keep_workdir = False
    workdir = tmp_workdir / "cp"
    with plane.start(find_binaries(), workdir):
        pids = [p.pid for p in plane.processes]
        assert [p.name for p in plane.processes] == [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok",
        ]
        assert all(pid_alive(pid) for pid in pids)
        assert live_processes_mentioning(str(workdir))

    assert not any(pid_alive(pid) for pid in pids)
    assert live_processes_mentioning(str(workdir)) == []
    assert not workdir.exists()
    plane.stop()  # idempotent


def test_a_failed_start_stops_what_was_started(tmp_workdir: Path) -> None:
    real = find_binaries()
    fake = tmp_workdir / "bin"
    fake.mkdir()
    (fake / "etcd").symlink_to(real / "etcd")
    apiserver = fake / "kube-apiserver"
    apiserver.write_text("#!/bin/sh\necho 'Error: unknown flag: --nonsense' >&2\nexit 2\n")
    apiserver.chmod(0o755)
    workdir = tmp_workdir / "cp"
    plane = ControlPlane()
    plane.keep_workdir = False

    with pytest.raises(HarnessError, match=r"kube-apiserver .* exited with status 2") as info:
        plane.start(fake, workdir)

    assert "unknown flag: --nonsense" in str(info.value)
    assert live_processes_mentioning(str(workdir)) == []
    assert not workdir.exists()


def test_start_refuses_a_workdir_left_from_an_earlier_run(tmp_workdir: Path) -> None:
    (tmp_workdir / "etcd").mkdir()
    with pytest.raises(HarnessError, match="not empty"):
        ControlPlane().start(find_binaries(), tmp_workdir)
    assert (tmp_workdir / "etcd").is_dir()


def test_monitoring_servers_stop_by_pid(tmp_workdir: Path) -> None:
    with (
        PrometheusServer(tmp_workdir / "prometheus", []) as prometheus,
        AlertmanagerServer(tmp_workdir / "alertmanager") as alertmanager,
    ):
        pids = [prometheus.process.pid, alertmanager.process.pid]
        assert all(pid_alive(pid) for pid in pids)

    assert not any(pid_alive(pid) for pid in pids)
    assert live_processes_mentioning(str(tmp_workdir)) == []


def test_up_command_serves_a_kubeconfig_until_sigterm(tmp_workdir: Path) -> None:
    workdir = tmp_workdir / "cp"
    env = {k: v for k, v in os.environ.items() if k != "AUTOCANARY_KEEP"}
    cmd = [sys.executable, "-m", "autocanary_testbed", "up", "--workdir", str(workdir)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) as up:
        try:
            assert up.stdout is not None
            lines = [up.stdout.readline() for _ in range(3)]
            assert lines[1].startswith("export KUBECONFIG=")
            kubeconfig = lines[1].removeprefix("export KUBECONFIG=").strip()
            assert kubeconfig == str(workdir / "admin.kubeconfig")

            with config.new_client_from_config(config_file=kubeconfig) as api:
                version = client.VersionApi(api).get_code(_request_timeout=10)
            assert version.git_version.startswith("v1.36.")
        finally:
            up.send_signal(signal.SIGTERM)
            assert up.wait(timeout=120) == 0

    assert live_processes_mentioning(str(workdir)) == []
    assert not workdir.exists()
