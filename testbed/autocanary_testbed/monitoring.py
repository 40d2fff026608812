"""Prometheus and Alertmanager from the Debian packages, run on 127.0.0.1 for tests.

``PrometheusServer`` scrapes the ``ScrapeTarget``s it is given (changeable at run
time through ``set_targets``, which reloads the config); it can also start on an
existing TSDB directory, e.g. one filled by ``promtool tsdb create-blocks-from
openmetrics`` for a backtest. ``AlertmanagerServer`` runs with clustering off so
it listens on nothing but its 127.0.0.1 web port.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import structlog
import yaml

from autocanary_testbed.errors import HarnessError
from autocanary_testbed.http_checks import http_ready
from autocanary_testbed.procs import ManagedProcess, free_port

log = structlog.get_logger(__name__)

_INSTALL_HINT = "apt-get install prometheus prometheus-alertmanager"
_READY_TIMEOUT_S = 60.0
_HTTP_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ScrapeTarget:
    """One ``host:port`` for Prometheus to scrape under ``job``, with extra target labels.

    A ``__metrics_path__`` label changes the path from the default ``/metrics``.
    """

    job: str
    address: str
    labels: Mapping[str, str] = field(default_factory=dict)


def find_tool(name: str) -> Path:
    """Path of a Prometheus-family executable (``prometheus``, ``promtool``, ...).

    Raises HarnessError naming the Debian packages when it is not installed.
    """
    found = shutil.which(name) or shutil.which(name, path="/usr/bin")
    if found is None:
        raise HarnessError(f"{name} not found on PATH or in /usr/bin: {_INSTALL_HINT}")
    return Path(found)


class _LocalServer:
    """One server process on a free 127.0.0.1 port: start, readiness, stop, context manager."""

    _name: str

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._proc: ManagedProcess | None = None
        self._port: int | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``; only valid while started."""
        if self._port is None:
            raise HarnessError(f"{self._name} not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def process(self) -> ManagedProcess:
        """The running server process."""
        if self._proc is None:
            raise HarnessError(f"{self._name} not started")
        return self._proc

    def start(self) -> Self:
        """Start the server and wait until it reports ready on ``/-/ready``; return self."""
        if self._proc is not None:
            raise HarnessError(f"{self._name} already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._port = free_port()
        self._proc = ManagedProcess.start(
            self._name, self._argv(f"127.0.0.1:{self._port}"), log_dir=self.workdir / "logs"
        )
        try:
            self._proc.wait_ready(http_ready(f"{self.url}/-/ready"), _READY_TIMEOUT_S, "ready")
        except BaseException:
            self.stop()
            raise
        log.debug("server ready", name=self._name, url=self.url)
        return self

    def stop(self) -> None:
        """Stop the server process (by PID). Idempotent; the work directory stays."""
        if self._proc is not None:
            proc, self._proc = self._proc, None
            proc.stop(_STOP_TIMEOUT_S)

    def _argv(self, listen: str) -> list[str]:
        raise NotImplementedError

    def __enter__(self) -> Self:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class PrometheusServer(_LocalServer):
    """A Prometheus scraping ``targets`` with its data in ``workdir`` (or ``storage_path``)."""

    _name = "prometheus"

    def __init__(
        self,
        workdir: Path,
        targets: Iterable[ScrapeTarget] = (),
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        rule_files: Sequence[Path] = (),
        *,
        alertmanagers: Sequence[str] = (),
        storage_path: Path | None = None,
        retention: str | None = None,
    ) -> None:
        """Configure, without starting.

        ``alertmanagers`` are ``host:port`` addresses alerts from ``rule_files`` go to.
        ``storage_path`` may hold existing TSDB blocks; give a ``retention`` (e.g.
        ``"10y"``) long enough to keep them, since older blocks are deleted on start.
        """
        super().__init__(workdir)
        self._binary = find_tool("prometheus")
        self.targets = tuple(targets)
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.rule_files = tuple(rule_files)
        self.alertmanagers = tuple(alertmanagers)
        self.storage_path = storage_path or workdir / "data"
        self.retention = retention
        self.config_path = workdir / "prometheus.yml"

    def set_targets(self, targets: Iterable[ScrapeTarget]) -> None:
        """Replace the scrape targets and reload the running Prometheus.

        Raises HarnessError if Prometheus rejects the new configuration.
        """
        self.targets = tuple(targets)
        self._write_config()
        try:
            with httpx.Client(trust_env=False, timeout=_HTTP_TIMEOUT_S) as http:
                response = http.post(f"{self.url}/-/reload")
        except httpx.HTTPError as e:
            raise HarnessError(f"prometheus reload failed: {e}") from e
        if not response.is_success:
            raise HarnessError(f"prometheus rejected the new config: {response.text.strip()}")

    def wait_for_target_up(self, job: str, timeout: float = 30.0) -> None:
        """Wait until every target of ``job`` (at least one) was scraped successfully.

        Raises HarnessError with the targets' last errors when that does not happen in time.
        """
        last_errors: list[str] = []

        def all_up() -> bool:
            active = [t for t in self._active_targets() if t["labels"].get("job") == job]
            last_errors[:] = [
                f"{t['scrapeUrl']}: {t.get('lastError') or t['health']}" for t in active
            ]
            return bool(active) and all(t["health"] == "up" for t in active)

        try:
            self.process.wait_ready(all_up, timeout, f"scraping job {job!r}")
        except HarnessError as e:
            raise HarnessError(f"{e}\ntargets of job {job!r}: {last_errors or 'none'}") from e

    def _active_targets(self) -> list[dict[str, Any]]:
        try:
            with httpx.Client(trust_env=False, timeout=_HTTP_TIMEOUT_S) as http:
                response = http.get(f"{self.url}/api/v1/targets", params={"state": "active"})
                response.raise_for_status()
        except httpx.HTTPError as e:
            raise HarnessError(f"prometheus targets API failed: {e}") from e
        targets: list[dict[str, Any]] = response.json()["data"]["activeTargets"]
        return targets

    def _argv(self, listen: str) -> list[str]:
        self._write_config()
        argv = [
            str(self._binary),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.storage_path}",
            f"--web.listen-address={listen}",
            # Lets set_targets reload the config through POST /-/reload.
            "--web.enable-lifecycle",
        ]
        if self.retention is not None:
            argv.append(f"--storage.tsdb.retention.time={self.retention}")
        return argv

    def _write_config(self) -> None:
        jobs: dict[str, list[dict[str, Any]]] = {}
        for target in self.targets:
            jobs.setdefault(target.job, []).append(
                {"targets": [target.address], "labels": dict(target.labels)}
            )
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
            },
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": statics} for job, statics in jobs.items()
            ],
        }
        if self.alertmanagers:
            config["alerting"] = {
                "alertmanagers": [{"static_configs": [{"targets": list(self.alertmanagers)}]}]
            }
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


class AlertmanagerServer(_LocalServer):
    """An Alertmanager routing every alert to one webhook, or to nowhere."""

    _name = "alertmanager"

    def __init__(self, workdir: Path, webhook_url: str | None = None) -> None:
        """Configure, without starting; ``webhook_url`` receives every notification if given."""
        super().__init__(workdir)
        self._binary = find_tool("prometheus-alertmanager")
        self.webhook_url = webhook_url
        self.config_path = workdir / "alertmanager.yml"

    def _argv(self, listen: str) -> list[str]:
        receiver: dict[str, Any] = {"name": "default"}
        if self.webhook_url is not None:
            receiver["webhook_configs"] = [{"url": self.webhook_url, "send_resolved": True}]
        config = {
            # Short waits so a test sees a notification within seconds, not minutes.
            "route": {
                "receiver": "default",
                "group_wait": "1s",
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            "receivers": [receiver],
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        return [
            str(self._binary),
            f"--config.file={self.config_path}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address={listen}",
            # Empty disables clustering: no gossip listener on another address.
            "--cluster.listen-address=",
        ]
