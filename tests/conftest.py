"""Shared pytest fixtures. Real services come from ``autocanary_testbed``; see each section.

Sections:
- hygiene: structlog reset, failure tracking (work directories of failed tests are kept)
- work directories: ``tmp_workdir``
- Kubernetes: ``control_plane`` (session), ``kube_api`` (session), ``namespace``,
  ``runner_namespace`` (its pods run as processes by ``pod_runner``)
- monitoring: ``prometheus_factory``, ``alertmanager``
- processes and traffic: ``group`` (a ProcessGroup), ``proxy`` (a ServiceProxy)
- Argo Rollouts: ``argo_rollouts`` (its build, CRDs installed; session)

Set ``AUTOCANARY_KEEP=1`` to keep every work directory (logs, configs) after the run.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from kubernetes import client

from autocanary_testbed import argo
from autocanary_testbed.binaries import find_argo_rollouts
from autocanary_testbed.controlplane import ControlPlane, find_binaries
from autocanary_testbed.errors import HarnessError
from autocanary_testbed.monitoring import AlertmanagerServer, PrometheusServer, ScrapeTarget
from autocanary_testbed.podrunner import PodRunner
from autocanary_testbed.procs import ProcessGroup
from autocanary_testbed.serviceproxy import ServiceProxy

PrometheusFactory = Callable[..., PrometheusServer]

_KEEP_ALL = os.environ.get("AUTOCANARY_KEEP") == "1"
_FAILED = pytest.StashKey[bool]()
_KEPT = pytest.StashKey[list[Path]]()


# ---- hygiene --------------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember on the test item whether any phase failed, for fixtures' teardown."""
    report = yield
    if report.failed:
        item.stash[_FAILED] = True
    return report


def _test_failed(request: pytest.FixtureRequest) -> bool:
    return request.node.stash.get(_FAILED, False)


def _keep(request: pytest.FixtureRequest, path: Path) -> None:
    """Note a work directory left in place, for the end-of-run summary."""
    request.config.stash.setdefault(_KEPT, []).append(path)


def _timeout(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    return float(marker.args[0]) if marker is not None and marker.args else 0.0


_TIER_ORDER = {"e2e": 0, "integration": 1, "unit": 2}


def _tier(item: pytest.Item) -> int:
    return _TIER_ORDER.get(item.path.parent.name, len(_TIER_ORDER))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order the run longest first, so that every worker finishes at about the same time.

    A test's timeout above the default is what marks it long (the shipped configs
    hold for many minutes each); then come e2e scenarios, integration and unit
    tests, the many short ones filling the end. `make test` runs pytest-xdist with
    ``--maxschedchunk 1``: each worker gets two tests at first, then one more each
    time it is down to one. So each long scenario is paired with a unit test, that
    no worker starts with two long ones.
    """
    long = sorted((i for i in items if _timeout(i) > 900), key=_timeout, reverse=True)
    rest = sorted((i for i in items if _timeout(i) <= 900), key=_tier)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    ordered: list[pytest.Item] = []
    for first in long[:workers]:
        ordered += [first, *rest[-1:]]
        rest = rest[:-1]
    items[:] = [*ordered, *long[workers:], *rest]


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """List the work directories (logs, configs) kept for inspection."""
    for path in config.stash.get(_KEPT, []):
        terminalreporter.write_line(f"work directory kept: {path}")


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Undo any structlog configuration a test made."""
    yield
    structlog.reset_defaults()


# ---- work directories -----------------------------------------------------------------------


@pytest.fixture
def tmp_workdir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh directory, removed after the test unless it failed or AUTOCANARY_KEEP=1."""
    path = Path(tempfile.mkdtemp(prefix="autocanary-test-"))
    yield path
    if _KEEP_ALL or _test_failed(request):
        _keep(request, path)
    else:
        shutil.rmtree(path, ignore_errors=True)


# ---- Kubernetes -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    """One real control plane (etcd, apiserver, controller-manager, scheduler, KWOK) per run.

    Fails, never skips, when the binaries are missing: the message names the build command.
    """
    try:
        bin_dir = find_binaries()
    except HarnessError as e:
        pytest.fail(str(e), pytrace=False)
    plane = ControlPlane()
    plane.start(bin_dir)
    try:
        yield plane
    finally:
        if request.session.testsfailed:
            plane.keep_workdir = True
            _keep(request, plane.workdir)
        plane.stop()


@pytest.fixture(scope="session")
def kube_api(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    """An admin ApiClient for the session's control plane."""
    with control_plane.api_client() as api:
        yield api


def _namespace_name(request: pytest.FixtureRequest) -> str:
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    return f"{stem}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test, its default ServiceAccount present; deleted after."""
    name = _namespace_name(request)
    control_plane.create_namespace(name)
    try:
        yield name
    finally:
        control_plane.delete_namespace(name)


@pytest.fixture
def runner_namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """Like ``namespace``, but its pods are Ready only once ``pod_runner`` runs them."""
    name = _namespace_name(request)
    control_plane.create_namespace(name, pod_runner=True)
    try:
        yield name
    finally:
        control_plane.delete_namespace(name)


@pytest.fixture
def pod_runner(
    control_plane: ControlPlane, runner_namespace: str, tmp_workdir: Path
) -> Iterator[PodRunner]:
    """The kubelet of ``runner_namespace``: each pod a local process on its pod IP."""
    with (
        control_plane.api_client() as api,
        PodRunner(
            api, control_plane.pod_network, runner_namespace, tmp_workdir / "logs" / "pods"
        ) as runner,
    ):
        yield runner


# ---- monitoring -----------------------------------------------------------------------------


@pytest.fixture
def prometheus_factory(tmp_workdir: Path) -> Iterator[PrometheusFactory]:
    """``factory(targets, **kw)`` starts a PrometheusServer (``kw`` as its constructor's).

    Every server started is stopped after the test.
    """
    started: list[PrometheusServer] = []

    def factory(targets: list[ScrapeTarget], **kw: Any) -> PrometheusServer:
        server = PrometheusServer(tmp_workdir / f"prometheus-{len(started)}", targets, **kw)
        server.start()
        started.append(server)
        return server

    try:
        yield factory
    finally:
        for server in reversed(started):
            server.stop()


@pytest.fixture
def alertmanager(tmp_workdir: Path) -> Iterator[AlertmanagerServer]:
    """A running Alertmanager routing to a null receiver; stopped after the test."""
    with AlertmanagerServer(tmp_workdir / "alertmanager") as server:
        yield server


# ---- processes and traffic --------------------------------------------------------------


@pytest.fixture
def group(tmp_workdir: Path) -> Iterator[ProcessGroup]:
    """Processes a test starts (testpage, probe, ...), stopped newest first afterwards."""
    with ProcessGroup(tmp_workdir / "logs") as processes:
        yield processes


@pytest.fixture
def proxy() -> Iterator[ServiceProxy]:
    """A running Service proxy (round robin over the backends the test sets)."""
    with ServiceProxy() as running:
        yield running


# ---- Argo Rollouts ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def argo_rollouts(control_plane: ControlPlane) -> Path:
    """The Argo Rollouts build (hack/argo-rollouts/build.sh), its CRDs installed in the cluster.

    Fails, never skips, when the build is missing: the message names the build command.
    """
    try:
        build = find_argo_rollouts()
    except HarnessError as e:
        pytest.fail(str(e), pytrace=False)
    with control_plane.api_client() as api:
        argo.install_crds(api, build)
    return build
