"""The tails of hack/controlplane/build.sh and hack/prometheus/build.sh on real binaries.

A cached build (its ``.complete`` marker) hides this path everywhere else, which
is how a SIGPIPE in it (``etcd --version | head -1`` under ``pipefail``) once
failed every new machine while CI, with a finished cache, stayed green.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from autocanary_testbed import binaries

pytestmark = pytest.mark.integration

BUILD_SH = Path(__file__).parents[2] / "hack" / "controlplane" / "build.sh"


def _unfinished_copy(tmp_path: Path) -> Path:
    """The built binaries in a new output directory, without the completion marker."""
    built = binaries.find_binaries()
    out = tmp_path / "out"
    (out / "stages").mkdir(parents=True)
    for name in binaries.EXECUTABLES:
        (out / name).symlink_to(built / name)
    for name in binaries.STAGES:
        (out / "stages" / name).symlink_to(built / "stages" / name)
    return out


def _post_build(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUILD_SH), "--post-build-only"],
        env={**os.environ, "OUT": str(out)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_post_build_marks_a_fresh_output_complete_every_time(tmp_path: Path) -> None:
    out = _unfinished_copy(tmp_path)
    # The SIGPIPE failed 4-14% of tries: repeating makes a regression visible.
    for attempt in range(25):
        (out / ".complete").unlink(missing_ok=True)
        done = _post_build(out)
        assert done.returncode == 0, f"attempt {attempt}: {done.stderr}"
        assert done.stdout.strip().splitlines()[-1] == str(out)
        assert (out / ".complete").is_file()
    assert "built: etcd" in done.stderr
    assert "built: kwok" in done.stderr
    assert "built: Kubernetes v" in done.stderr


def test_post_build_refuses_an_output_missing_a_binary(tmp_path: Path) -> None:
    out = _unfinished_copy(tmp_path)
    (out / "etcd").unlink()
    done = _post_build(out)
    assert done.returncode != 0
    assert f"build finished without {out}/etcd" in done.stderr
    assert not (out / ".complete").exists()


PROMETHEUS_BUILD_SH = Path(__file__).parents[2] / "hack" / "prometheus" / "build.sh"


def _prometheus_post_build(out: Path, version: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PROMETHEUS_BUILD_SH), "--post-build-only"],
        env={**os.environ, "OUT": str(out), "PROMETHEUS": version},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_prometheus_post_build_checks_the_binary_runs_at_its_version(tmp_path: Path) -> None:
    out = tmp_path / "prometheus"
    out.mkdir()
    (out / "prometheus").symlink_to(binaries.find_prometheus())

    done = _prometheus_post_build(out, binaries.PROMETHEUS_VERSION)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(out)
    assert (out / ".complete").is_file()
    assert f"built: prometheus, version {binaries.PROMETHEUS_VERSION} " in done.stderr

    (out / ".complete").unlink()
    wrong = _prometheus_post_build(out, "3.1.0")
    assert wrong.returncode != 0
    assert "expected version 3.1.0" in wrong.stderr
    assert not (out / ".complete").exists()

    (out / "prometheus").unlink()
    missing = _prometheus_post_build(out, binaries.PROMETHEUS_VERSION)
    assert missing.returncode != 0
    assert f"build finished without {out}/prometheus" in missing.stderr
    assert not (out / ".complete").exists()


ARGO_BUILD_SH = Path(__file__).parents[2] / "hack" / "argo-rollouts" / "build.sh"


def _argo_post_build(out: Path, version: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ARGO_BUILD_SH), "--post-build-only"],
        env={**os.environ, "OUT": str(out), "ARGO_ROLLOUTS": version},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.argo_rollouts
def test_argo_rollouts_post_build_checks_the_controller_and_its_crds(tmp_path: Path) -> None:
    built = binaries.find_argo_rollouts()
    out = tmp_path / "argo"
    (out / "crds").mkdir(parents=True)
    (out / "rollouts-controller").symlink_to(built / "rollouts-controller")
    for crd in binaries.ARGO_ROLLOUTS_CRDS:
        (out / "crds" / crd).symlink_to(built / "crds" / crd)

    done = _argo_post_build(out, binaries.ARGO_ROLLOUTS_VERSION)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(out)
    assert f"built: rollouts-controller v{binaries.ARGO_ROLLOUTS_VERSION}+unknown" in done.stderr

    (out / ".complete").unlink()
    wrong = _argo_post_build(out, "1.9.0")
    assert wrong.returncode != 0
    assert "expected v1.9.0" in wrong.stderr
    assert not (out / ".complete").exists()

    (out / "crds" / "analysis-run-crd.yaml").unlink()
    missing = _argo_post_build(out, binaries.ARGO_ROLLOUTS_VERSION)
    assert missing.returncode != 0
    assert f"build finished without {out}/crds/analysis-run-crd.yaml" in missing.stderr
    assert not (out / ".complete").exists()
