"""Local processes for tests: start with a log file, wait on a readiness signal, stop for sure.

Each process starts in its own session, so stopping it signals its whole
process group and nothing it spawned outlives it. Processes are stopped by
their recorded PID only, never looked up by name.
"""

from __future__ import annotations

import collections
import contextlib
import os
import secrets
import signal
import socket
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import structlog

from autocanary_testbed.errors import HarnessError
from autocanary_testbed.waiting import WaitTimeout, wait_until

log = structlog.get_logger(__name__)

_KILL_WAIT_S = 5.0
_TAIL_BYTES = 64 * 1024

# Ports handed out recently, so one test bed never gives two services the same
# port in the moment between choosing it and the service binding it.
_recent_ports: collections.deque[int] = collections.deque(maxlen=256)
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PORT = 10000


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now, for a server about to listen on it.

    Chosen at random below the kernel's ephemeral range when there is room: the
    kernel hands ports in that range to outgoing connections, and one could take
    the port before the server binds it. Otherwise the kernel picks (port 0).
    """
    floor = _ephemeral_floor()
    span = floor - _LOWEST_PORT
    for _ in range(100):
        wanted = _LOWEST_PORT + secrets.randbelow(span) if span >= 1000 else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", wanted))
            except OSError:
                continue
            port = int(sock.getsockname()[1])
        if port not in _recent_ports:
            _recent_ports.append(port)
            return port
    raise HarnessError("no free port on 127.0.0.1 after 100 tries")


def _ephemeral_floor() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def pid_alive(pid: int) -> bool:
    """Whether a live process has this PID; a zombie (exited, not yet reaped) is not alive."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    # The state letter follows the command name, which is in parentheses and may hold spaces.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class ManagedProcess:
    """A process started by the test bed: its PID, its log file, waiting on it and stopping it.

    Create one with ``ManagedProcess.start``. stdout and stderr both go to
    ``<log_dir>/<name>.log``.
    """

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        """Wrap an already started process; use ``start`` instead of calling this directly."""
        self.name = name
        self.log_path = log_path
        self._popen = popen

    @classmethod
    def start(
        cls,
        name: str,
        argv: Sequence[str],
        *,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ManagedProcess:
        """Start ``argv`` in a new session, ``env`` set on top of this process's environment.

        Raises HarnessError when the program cannot be executed.
        """
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}.log"
        full_env = {**os.environ, **(env or {})}
        with log_path.open("ab") as log_file:
            try:
                popen = subprocess.Popen(  # noqa: S603 (argv comes from the test bed itself)
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=full_env,
                    cwd=cwd,
                    start_new_session=True,
                )
            except OSError as e:
                raise HarnessError(f"cannot start {name} ({argv[0]}): {e}") from e
        log.debug("process started", name=name, pid=popen.pid, log=str(log_path))
        return cls(name, popen, log_path)

    @property
    def pid(self) -> int:
        """The process ID, which is also its process group ID."""
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has exited, else None (negative: killed by signal)."""
        if self._popen.returncode is not None:
            return self._popen.returncode
        info = self._peek_exit()
        if info is None:
            return self._popen.returncode
        if info.si_code == os.CLD_EXITED:
            return info.si_status
        return -info.si_status

    def is_running(self) -> bool:
        """Whether the process has not exited yet."""
        return self.returncode is None

    def wait_ready(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``check`` until it returns True; fail fast if the process exits meanwhile.

        ``what`` names the awaited state for the error message ("serving /readyz").
        Raises HarnessError, with the tail of the process's log, on exit or timeout.
        """

        def alive_and_ready() -> bool:
            code = self.returncode
            if code is not None:
                raise HarnessError(
                    f"{self.name} (pid {self.pid}) exited with status {code} before {what}; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            return check()

        try:
            wait_until(alive_and_ready, timeout=timeout, what=what)
        except WaitTimeout as e:
            raise HarnessError(
                f"{self.name} (pid {self.pid}) {e}; "
                f"last lines of {self.log_path}:\n{self.log_tail()}"
            ) from e

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``timeout`` seconds, and reap the process.

        Safe to call more than once. Raises HarnessError if even SIGKILL did not end it.
        """
        if self._popen.returncode is not None:
            return
        self._signal_group(signal.SIGTERM)
        if not self._wait_exit(timeout):
            log.warning("process ignored SIGTERM, killing", name=self.name, pid=self.pid)
            self._signal_group(signal.SIGKILL)
            if not self._wait_exit(_KILL_WAIT_S):
                raise HarnessError(f"{self.name} (pid {self.pid}) survived SIGKILL")
        # The leader is a zombie until reaped, so its group ID cannot have been reused
        # yet: killing the group now reaches only stragglers it left behind.
        self._signal_group(signal.SIGKILL)
        code = self._popen.wait()
        log.debug("process stopped", name=self.name, pid=self.pid, returncode=code)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the process's log file ('' if there is none yet)."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - _TAIL_BYTES))
                data = f.read()
        except FileNotFoundError:
            return ""
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

    def _peek_exit(self) -> os.waitid_result | None:
        """Exit information without reaping, so the PID stays reserved until ``stop``."""
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            # Already reaped elsewhere; let Popen record that it is gone.
            self._popen.wait()
            return None

    def _wait_exit(self, timeout: float) -> bool:
        try:
            wait_until(lambda: self.returncode is not None, timeout=timeout, what="exited")
        except WaitTimeout:
            return False
        return True

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def __repr__(self) -> str:
        return f"ManagedProcess({self.name!r}, pid={self.pid}, returncode={self.returncode})"


class ProcessGroup:
    """Processes started together and stopped together, newest first.

    Used as a context manager, it stops its members on exit, also after an error.
    """

    def __init__(self, log_dir: Path) -> None:
        """Members write their logs into ``log_dir``."""
        self.log_dir = log_dir
        self._members: list[ManagedProcess] = []

    @property
    def members(self) -> tuple[ManagedProcess, ...]:
        """The processes in start order."""
        return tuple(self._members)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ManagedProcess:
        """Start a process (see ``ManagedProcess.start``) and make it a member."""
        proc = ManagedProcess.start(name, argv, log_dir=self.log_dir, env=env, cwd=cwd)
        self._members.append(proc)
        return proc

    def replace(self, old: ManagedProcess, new: ManagedProcess) -> None:
        """Put ``new`` in ``old``'s place (a restarted component keeps its stop order)."""
        self._members[self._members.index(old)] = new

    def add(self, proc: ManagedProcess) -> None:
        """Make a process started elsewhere a member, stopped with the others."""
        self._members.append(proc)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every member, newest first; try them all, then raise if any failed."""
        failures: list[str] = []
        while self._members:
            proc = self._members.pop()
            try:
                proc.stop(timeout)
            except HarnessError as e:
                failures.append(str(e))
        if failures:
            raise HarnessError("; ".join(failures))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
