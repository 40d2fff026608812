"""testpage and probe as real processes on 127.0.0.1, for tests and the rehearsal.

Each runs as ``python -m autocanary.apps.testpage`` / ``python -m autocanary.apps.probe`` in
a ``ProcessGroup``, on a free port, and is returned once it serves HTTP. The daemon's own
command line (``autocanary run``) is here too, for the tests and benchmarks that start it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from autocanary_testbed.errors import HarnessError
from autocanary_testbed.http_checks import http_ready
from autocanary_testbed.procs import ManagedProcess, ProcessGroup, free_port

_READY_TIMEOUT_S = 30.0
_SCRAPE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class TestpageProcess:
    """A running testpage: its process, version and port."""

    __test__ = False  # a pytest collection hint: this class is not a test

    process: ManagedProcess
    version: str
    port: int

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``, as a Service backend or scrape target."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self.address}"


@dataclass(frozen=True)
class ProbeProcess:
    """A running probe: its process and metrics port."""

    process: ManagedProcess
    metrics_port: int

    @property
    def metrics_address(self) -> str:
        """``127.0.0.1:<port>`` of its /metrics, as a scrape target."""
        return f"127.0.0.1:{self.metrics_port}"

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        """Current samples (labels, value) of metric sample ``name`` from its /metrics."""
        return scrape(f"http://{self.metrics_address}/metrics", name)


def scrape(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    """GET a Prometheus text endpoint and return the samples named ``name``."""
    try:
        with httpx.Client(trust_env=False, timeout=_SCRAPE_TIMEOUT_S) as http:
            response = http.get(url)
            response.raise_for_status()
    except httpx.HTTPError as e:
        raise HarnessError(f"cannot scrape {url}: {e}") from e
    return [
        (dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == name
    ]


def daemon_command(config: Path, kubeconfig: Path, identity: str | None = None) -> list[str]:
    """``autocanary run`` with ``config`` and ``kubeconfig`` (and a leader identity)."""
    command = [
        sys.executable,
        "-m",
        "autocanary",
        "run",
        "--config",
        str(config),
        "--kubeconfig",
        str(kubeconfig),
    ]
    return [*command, "--identity", identity] if identity is not None else command


def start_testpage(
    group: ProcessGroup,
    version: str,
    *,
    env: Mapping[str, str] | None = None,
    drain_delay: str = "0s",
) -> TestpageProcess:
    """Start a testpage naming ``version``, ``env`` (e.g. ``FAULT_*``) on top; wait for /healthz."""
    port = free_port()
    process = group.start(
        f"testpage-{version}-{port}",
        [
            sys.executable,
            "-m",
            "autocanary.apps.testpage",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--drain-delay",
            drain_delay,
        ],
        env={"VERSION": version, **(env or {})},
    )
    process.wait_ready(
        http_ready(f"http://127.0.0.1:{port}/healthz"), _READY_TIMEOUT_S, "serving /healthz"
    )
    return TestpageProcess(process, version, port)


def start_probe(group: ProcessGroup, args: Sequence[str], *, name: str = "probe") -> ProbeProcess:
    """Start a probe with ``args`` (targets, rate, ...) and metrics on a free port; wait for it."""
    port = free_port()
    process = group.start(
        f"{name}-{port}",
        [
            sys.executable,
            "-m",
            "autocanary.apps.probe",
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            str(port),
            *args,
        ],
    )
    process.wait_ready(
        http_ready(f"http://127.0.0.1:{port}/metrics"), _READY_TIMEOUT_S, "serving /metrics"
    )
    return ProbeProcess(process, port)
