"""ManagedProcess and ProcessGroup against real child processes."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from autocanary_testbed.errors import HarnessError
from autocanary_testbed.procs import ManagedProcess, ProcessGroup, free_port, pid_alive
from autocanary_testbed.waiting import wait_until

pytestmark = pytest.mark.integration

# A Python child that writes its name to a shared file when SIGTERM arrives, then exits.
_RECORD_SIGTERM = """
import signal, sys, time
def on_term(*_):
    with open(sys.argv[2], "a") as f:
        f.write(sys.argv[1] + "\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
while True:
    time.sleep(60)
"""


def logged(proc: ManagedProcess, text: str) -> bool:
    return proc.log_path.exists() and text in proc.log_path.read_text()


def test_free_port_is_bindable_not_repeated_and_outside_the_ephemeral_range() -> None:
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == 20
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[0]))
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert all(10000 <= p < ephemeral_low for p in ports)


def test_start_passes_env_and_cwd_and_logs_output(tmp_workdir: Path) -> None:
    proc = ManagedProcess.start(
        "echo",
        ["sh", "-c", 'echo "value=$AUTOCANARY_PROBE_VAR"; pwd; echo oops >&2'],
        log_dir=tmp_workdir / "logs",
        env={"AUTOCANARY_PROBE_VAR": "42"},
        cwd=tmp_workdir,
    )
    wait_until(lambda: proc.returncode is not None, timeout=30, what="exited")
    proc.stop()
    assert proc.returncode == 0
    assert proc.log_tail().splitlines() == ["value=42", str(tmp_workdir), "oops"]
    assert proc.log_tail(1) == "oops"


def test_stop_ends_the_process_and_its_children(tmp_workdir: Path) -> None:
    child_pid_file = tmp_workdir / "child.pid"
    proc = ManagedProcess.start(
        "parent",
        ["sh", "-c", f"sleep 300 & echo $! > {child_pid_file}; wait"],
        log_dir=tmp_workdir,
    )
    proc.wait_ready(lambda: child_pid_file.exists() and child_pid_file.read_text() != "", 30, "x")
    child = int(child_pid_file.read_text())
    assert proc.is_running()

    proc.stop()

    assert proc.returncode is not None
    assert not pid_alive(proc.pid)
    wait_until(lambda: not pid_alive(child), timeout=30, what="child ended")
    proc.stop()  # idempotent


def test_stop_kills_a_process_ignoring_sigterm(tmp_workdir: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(300)"
    )
    proc = ManagedProcess.start("stubborn", [sys.executable, "-c", code], log_dir=tmp_workdir)
    proc.wait_ready(lambda: logged(proc, "ready"), 30, "ignoring SIGTERM")

    proc.stop(timeout=0.5)

    assert proc.returncode == -9
    assert not pid_alive(proc.pid)


def test_wait_ready_fails_fast_with_the_log_tail_when_the_process_dies(tmp_workdir: Path) -> None:
    proc = ManagedProcess.start(
        "crasher",
        ["sh", "-c", "echo first line; echo fatal: bad flag; exit 3"],
        log_dir=tmp_workdir,
    )
    with pytest.raises(HarnessError, match="exited with status 3 before serving") as info:
        proc.wait_ready(lambda: False, 600, "serving")
    assert "fatal: bad flag" in str(info.value)
    proc.stop()


def test_wait_ready_times_out_naming_what_it_waited_for(tmp_workdir: Path) -> None:
    proc = ManagedProcess.start(
        "sleeper", ["sh", "-c", "echo sleeping; exec sleep 300"], log_dir=tmp_workdir
    )
    try:
        with pytest.raises(HarnessError, match=r"not listening after 0\.3s") as info:
            proc.wait_ready(lambda: False, 0.3, "listening")
        assert "sleeper.log" in str(info.value)
    finally:
        proc.stop()


def test_start_of_a_missing_program_is_a_harness_error(tmp_workdir: Path) -> None:
    with pytest.raises(HarnessError, match="cannot start ghost"):
        ManagedProcess.start("ghost", [str(tmp_workdir / "no-such-binary")], log_dir=tmp_workdir)


def test_group_stops_members_newest_first(tmp_workdir: Path) -> None:
    order_file = tmp_workdir / "order"
    with ProcessGroup(tmp_workdir / "logs") as group:
        for name in ("first", "second", "third"):
            proc = group.start(name, [sys.executable, "-c", _RECORD_SIGTERM, name, str(order_file)])
            proc.wait_ready(lambda p=proc: logged(p, "ready"), 30, "handling SIGTERM")
        pids = [p.pid for p in group.members]

    assert order_file.read_text().split() == ["third", "second", "first"]
    assert not any(pid_alive(pid) for pid in pids)
    assert group.members == ()
