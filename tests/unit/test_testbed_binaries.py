"""Locating the control-plane build: the same directory as hack/controlplane/build.sh."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from autocanary_testbed import binaries
from autocanary_testbed.errors import HarnessError

BUILD_SH = Path(__file__).parents[2] / "hack" / "controlplane" / "build.sh"
PROMETHEUS_BUILD_SH = Path(__file__).parents[2] / "hack" / "prometheus" / "build.sh"
TRAEFIK_BUILD_SH = Path(__file__).parents[2] / "hack" / "traefik" / "build.sh"


def make_build(directory: Path) -> Path:
    (directory / "stages").mkdir(parents=True)
    for name in binaries.EXECUTABLES:
        (directory / name).write_text("")
    for name in binaries.STAGES:
        (directory / "stages" / name).write_text("")
    (directory / ".complete").write_text("")
    return directory


@pytest.fixture
def fake_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `go` on PATH that reports go9.9.9, so the directory name is predictable."""
    bin_dir = tmp_path / "gobin"
    bin_dir.mkdir()
    go = bin_dir / "go"
    go.write_text("#!/bin/sh\necho go9.9.9\n")
    go.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    for name in (
        "AUTOCANARY_TESTBIN",
        "K8S",
        "ETCD",
        "KWOK",
        "PROMETHEUS",
        "TRAEFIK",
        "GATEWAY_API",
        "XDG_CACHE_HOME",
    ):
        monkeypatch.delenv(name, raising=False)


def test_pins_match_build_sh() -> None:
    text = BUILD_SH.read_text()
    pins = dict(re.findall(r"^(K8S|ETCD|KWOK)=\$\{\1:-([0-9.]+)\}$", text, re.M))
    assert pins == {
        "K8S": binaries.K8S_VERSION,
        "ETCD": binaries.ETCD_VERSION,
        "KWOK": binaries.KWOK_VERSION,
    }
    for stage in binaries.STAGES:
        assert f"/{stage}" in text


@pytest.mark.usefixtures("fake_go")
def test_finds_the_versioned_directory_under_the_cache_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOCANARY_CACHE", str(tmp_path / "cache"))
    expected = tmp_path / "cache" / "testbin" / "k8s1.36.3-etcd3.6.16-kwok0.8.0-go9.9.9"
    make_build(expected)
    assert binaries.find_binaries() == expected


@pytest.mark.usefixtures("fake_go")
def test_missing_build_names_the_build_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AUTOCANARY_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with pytest.raises(HarnessError, match=r"hack/controlplane/build\.sh") as info:
        binaries.find_binaries()
    assert str(tmp_path / "xdg" / "autocanary" / "testbin") in str(info.value)


def test_override_must_hold_a_complete_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = make_build(tmp_path / "custom")
    monkeypatch.setenv("AUTOCANARY_TESTBIN", str(build))
    assert binaries.find_binaries() == build

    (build / ".complete").unlink()
    (build / "kwok").unlink()
    with pytest.raises(HarnessError, match=r"missing .*: kwok, \.complete"):
        binaries.find_binaries()


def test_prometheus_pin_matches_its_build_sh() -> None:
    text = PROMETHEUS_BUILD_SH.read_text()
    (pin,) = re.findall(r"^PROMETHEUS=\$\{PROMETHEUS:-([0-9.]+)\}$", text, re.M)
    assert pin == binaries.PROMETHEUS_VERSION


@pytest.mark.usefixtures("fake_go")
def test_finds_prometheus_under_the_cache_root_or_names_its_build_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOCANARY_CACHE", str(tmp_path / "cache"))
    directory = tmp_path / "cache" / "prometheus" / "3.16.0-go9.9.9"
    with pytest.raises(HarnessError, match=r"hack/prometheus/build\.sh") as info:
        binaries.find_prometheus()
    assert str(directory) in str(info.value)

    directory.mkdir(parents=True)
    (directory / "prometheus").write_text("")
    with pytest.raises(HarnessError, match=r"no complete Prometheus 3\.16\.0 build"):
        binaries.find_prometheus()
    (directory / ".complete").write_text("")
    assert binaries.find_prometheus() == directory / "prometheus"


ARGO_BUILD_SH = Path(__file__).parents[2] / "hack" / "argo-rollouts" / "build.sh"


def test_argo_rollouts_pin_matches_its_build_sh() -> None:
    text = ARGO_BUILD_SH.read_text()
    (pin,) = re.findall(r"^ARGO_ROLLOUTS=\$\{ARGO_ROLLOUTS:-([0-9.]+)\}$", text, re.M)
    assert pin == binaries.ARGO_ROLLOUTS_VERSION
    # build.sh's post-build check names each CRD file the test bed installs.
    for crd in binaries.ARGO_ROLLOUTS_CRDS:
        assert crd.removesuffix("-crd.yaml") in text


@pytest.mark.usefixtures("fake_go")
def test_finds_argo_rollouts_under_the_cache_root_or_names_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOCANARY_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ARGO_ROLLOUTS", raising=False)
    directory = tmp_path / "cache" / "argo-rollouts" / "1.10.1-go9.9.9"
    with pytest.raises(HarnessError, match=r"hack/argo-rollouts/build\.sh") as info:
        binaries.find_argo_rollouts()
    assert str(directory) in str(info.value)

    (directory / "crds").mkdir(parents=True)
    (directory / "rollouts-controller").write_text("")
    (directory / ".complete").write_text("")
    for crd in binaries.ARGO_ROLLOUTS_CRDS[1:]:
        (directory / "crds" / crd).write_text("")
    with pytest.raises(HarnessError, match=r"missing: crds/rollout-crd\.yaml\)"):
        binaries.find_argo_rollouts()
    (directory / "crds" / "rollout-crd.yaml").write_text("")
    assert binaries.find_argo_rollouts() == directory


def test_traefik_pins_match_its_build_sh() -> None:
    text = TRAEFIK_BUILD_SH.read_text()
    pins = dict(re.findall(r"^(TRAEFIK|GATEWAY_API)=\$\{\1:-([0-9.]+)\}$", text, re.M))
    assert pins == {
        "TRAEFIK": binaries.TRAEFIK_VERSION,
        "GATEWAY_API": binaries.GATEWAY_API_VERSION,
    }
    for name in binaries.TRAEFIK_FILES:
        assert f"$OUT/{name}" in text


@pytest.mark.usefixtures("fake_go")
def test_finds_traefik_under_the_cache_root_or_names_its_build_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOCANARY_CACHE", str(tmp_path / "cache"))
    directory = tmp_path / "cache" / "traefik" / "3.6.12-gatewayapi1.6.3-go9.9.9"
    with pytest.raises(HarnessError, match=r"hack/traefik/build\.sh") as info:
        binaries.find_traefik()
    assert str(directory) in str(info.value)

    directory.mkdir(parents=True)
    for name in binaries.TRAEFIK_FILES:
        (directory / name).write_text("")
    with pytest.raises(HarnessError, match=r"missing \.complete"):
        binaries.find_traefik()
    (directory / ".complete").write_text("")
    assert binaries.find_traefik() == directory


def test_finds_the_gateway_api_crds_or_names_the_command_that_copies_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOCANARY_CACHE", str(tmp_path / "cache"))
    directory = tmp_path / "cache" / "gateway-api" / "v1.6.3"
    with pytest.raises(HarnessError, match=r"hack/traefik/build\.sh --crds-only") as info:
        binaries.find_gateway_api_crds()
    assert str(directory) in str(info.value)

    directory.mkdir(parents=True)
    (directory / "gateway-api-crds.yaml").write_text("kind: CustomResourceDefinition\n")
    with pytest.raises(HarnessError):
        binaries.find_gateway_api_crds()  # not marked complete: a copy cut short
    (directory / ".complete").write_text("")
    assert binaries.find_gateway_api_crds() == directory / "gateway-api-crds.yaml"
