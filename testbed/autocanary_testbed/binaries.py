"""Where hack/'s build scripts leave the control plane, Prometheus, Argo Rollouts and Traefik.

The pins and the directory layout mirror the scripts (a unit test keeps the pins
in step): ``${AUTOCANARY_CACHE:-${XDG_CACHE_HOME:-~/.cache}/autocanary}/testbin/
k8s<K8S>-etcd<ETCD>-kwok<KWOK>-<go version>/`` for the control plane,
``.../prometheus/<PROMETHEUS>-<go version>/prometheus`` for Prometheus,
``.../argo-rollouts/<ARGO_ROLLOUTS>-<go version>/`` for Argo Rollouts' controller and CRDs and
``.../traefik/<TRAEFIK>-gatewayapi<GATEWAY_API>-<go version>/`` for Traefik and the Gateway
API CRDs, each complete once ``.complete`` exists. ``AUTOCANARY_TESTBIN`` names the control
plane's directory outright.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from autocanary_testbed.errors import HarnessError

K8S_VERSION = "1.36.3"
ETCD_VERSION = "3.6.16"
KWOK_VERSION = "0.8.0"
PROMETHEUS_VERSION = "3.16.0"
ARGO_ROLLOUTS_VERSION = "1.10.1"
TRAEFIK_VERSION = "3.6.12"
GATEWAY_API_VERSION = "1.6.3"

EXECUTABLES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
STAGES = (
    "node-initialize.yaml",
    "node-heartbeat-with-lease.yaml",
    "pod-ready.yaml",
    "pod-complete.yaml",
    "pod-delete.yaml",
)
BUILD_COMMAND = "hack/controlplane/build.sh"
PROMETHEUS_BUILD_COMMAND = "hack/prometheus/build.sh"
ARGO_ROLLOUTS_BUILD_COMMAND = "hack/argo-rollouts/build.sh"
ARGO_ROLLOUTS_CRDS = (
    "rollout-crd.yaml",
    "analysis-template-crd.yaml",
    "analysis-run-crd.yaml",
    "cluster-analysis-template-crd.yaml",
    "experiment-crd.yaml",
)
TRAEFIK_BUILD_COMMAND = "hack/traefik/build.sh"
GATEWAY_API_CRDS_COMMAND = "hack/traefik/build.sh --crds-only"
#: What hack/traefik/build.sh leaves in its directory.
TRAEFIK_FILES = ("traefik", "gateway-api-crds.yaml")

_GO_TIMEOUT_S = 30.0


def find_binaries() -> Path:
    """Return the directory holding a complete control-plane build.

    Raises HarnessError, naming the command that builds it, when there is none.
    """
    override = os.environ.get("AUTOCANARY_TESTBIN")
    if override:
        return _checked(Path(override), why="AUTOCANARY_TESTBIN")
    k8s = os.environ.get("K8S", K8S_VERSION)
    etcd = os.environ.get("ETCD", ETCD_VERSION)
    kwok = os.environ.get("KWOK", KWOK_VERSION)
    testbin = _cache_root() / "testbin"
    stem = f"k8s{k8s}-etcd{etcd}-kwok{kwok}"
    go_version = _go_version()
    if go_version is not None:
        return _checked(testbin / f"{stem}-{go_version}", why="build.sh's output directory")
    # Without Go the tests can still run on binaries built earlier by any Go version.
    built = sorted(p.parent for p in testbin.glob(f"{stem}-*/.complete"))
    if not built:
        raise HarnessError(
            f"no control-plane build under {testbin} and no Go to make one: install Go >= 1.26, "
            f"then run `{BUILD_COMMAND}` from the repository root (15-40 min cold, then cached)"
        )
    return _checked(built[-1], why="the newest build found")


def find_prometheus() -> Path:
    """Return the Prometheus executable built by ``hack/prometheus/build.sh``.

    Raises HarnessError, naming the command that builds it, when there is none.
    """
    version = os.environ.get("PROMETHEUS", PROMETHEUS_VERSION)
    root = _cache_root() / "prometheus"
    directory = _build_dir(root, version)
    binary = directory / "prometheus"
    if not (binary.is_file() and (directory / ".complete").exists()):
        raise HarnessError(
            f"no complete Prometheus {version} build in {directory}: build it with "
            f"`{PROMETHEUS_BUILD_COMMAND}` from the repository root (Go >= 1.26; "
            "a few minutes cold, cached afterwards)"
        )
    return binary


def find_argo_rollouts() -> Path:
    """Return the directory of a complete ``hack/argo-rollouts/build.sh`` output.

    Raises HarnessError, naming the command that builds it, when there is none.
    """
    version = os.environ.get("ARGO_ROLLOUTS", ARGO_ROLLOUTS_VERSION)
    root = _cache_root() / "argo-rollouts"
    directory = _build_dir(root, version)
    missing = [n for n in ("rollouts-controller", ".complete") if not (directory / n).exists()]
    missing += [f"crds/{n}" for n in ARGO_ROLLOUTS_CRDS if not (directory / "crds" / n).is_file()]
    if missing:
        raise HarnessError(
            f"no complete Argo Rollouts {version} build in {directory} "
            f"(missing: {', '.join(missing)}): build it with `{ARGO_ROLLOUTS_BUILD_COMMAND}` "
            "from the repository root (Go >= 1.26.1; minutes cold, cached afterwards)"
        )
    return directory


def find_traefik() -> Path:
    """Return the directory of ``hack/traefik/build.sh``'s output (:data:`TRAEFIK_FILES`).

    Raises HarnessError, naming the command that builds it, when there is none.
    """
    stem = (
        f"{os.environ.get('TRAEFIK', TRAEFIK_VERSION)}"
        f"-gatewayapi{os.environ.get('GATEWAY_API', GATEWAY_API_VERSION)}"
    )
    root = _cache_root() / "traefik"
    directory = _build_dir(root, stem)
    missing = [n for n in (*TRAEFIK_FILES, ".complete") if not (directory / n).is_file()]
    if missing:
        raise HarnessError(
            f"no complete Traefik build in {directory} (missing {', '.join(missing)}): build it "
            f"with `{TRAEFIK_BUILD_COMMAND}` from the repository root (Go >= 1.26; "
            "minutes cold, cached afterwards)"
        )
    return directory


def find_gateway_api_crds() -> Path:
    """Return the Gateway API standard channel's CRDs copied by ``--crds-only``.

    Raises HarnessError, naming the command that copies them, when there are none.
    """
    version = os.environ.get("GATEWAY_API", GATEWAY_API_VERSION)
    directory = _cache_root() / "gateway-api" / f"v{version}"
    bundle = directory / "gateway-api-crds.yaml"
    if not (bundle.is_file() and (directory / ".complete").is_file()):
        raise HarnessError(
            f"no Gateway API v{version} CRDs in {directory}: copy them with "
            f"`{GATEWAY_API_CRDS_COMMAND}` from the repository root (seconds)"
        )
    return bundle


def _build_dir(root: Path, stem: str) -> Path:
    """Where the build ``stem`` by this machine's Go lives under ``root`` (it may not exist).

    Without Go, a complete build by any Go version will do (the newest name).
    """
    go_version = _go_version()
    if go_version is not None:
        return root / f"{stem}-{go_version}"
    built = sorted(p.parent for p in root.glob(f"{stem}-*/.complete"))
    return built[-1] if built else root / f"{stem}-<go version>"


def _cache_root() -> Path:
    explicit = os.environ.get("AUTOCANARY_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "autocanary"


def _go_version() -> str | None:
    go = shutil.which("go")
    if go is None:
        return None
    try:
        out = subprocess.run(  # noqa: S603 (fixed argv)
            [go, "env", "GOVERSION"],
            check=True,
            capture_output=True,
            text=True,
            timeout=_GO_TIMEOUT_S,
            env={**os.environ, "GOTOOLCHAIN": "local"},
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        raise HarnessError(f"`go env GOVERSION` failed: {e}") from e
    return out.stdout.strip()


def _checked(directory: Path, *, why: str) -> Path:
    missing = [n for n in EXECUTABLES if not (directory / n).is_file()]
    missing += [f"stages/{n}" for n in STAGES if not (directory / "stages" / n).is_file()]
    if not (directory / ".complete").exists():
        missing.append(".complete")
    if missing:
        raise HarnessError(
            f"control-plane binaries missing in {directory} ({why}): {', '.join(missing)}. "
            f"Build them with `{BUILD_COMMAND}` from the repository root "
            "(15-40 min cold on 2 cores, cached afterwards), or point AUTOCANARY_TESTBIN "
            "at a complete build."
        )
    return directory
