"""The image's install, replayed: the builder stage's commands, as written, in a fresh virtualenv.

No Docker engine runs here, so this test does what ``docker build`` would do
in the builder stage: copy what its COPY instructions name into a build
directory, and run each RUN command with ``/bin/sh -c`` there, with the stage's
ENV and ``$VIRTUAL_ENV`` pointing at a temporary directory instead of
``/opt/autocanary`` (the stage uses no other absolute path; a check below
makes sure). ``python`` is this test's interpreter, standing in for the base
image's.

The commands install hatchling (to build the wheel) and the pinned
dependencies as ``docker build`` would, but from the local wheelhouse that
``hack/setup.sh`` fills (``PIP_NO_INDEX``/``PIP_FIND_LINKS``): tests talk to
nothing beyond 127.0.0.1. Then the virtualenv must hold
exactly the pins of deploy/constraints.txt, no pip or build tools (the final
stage copies it whole), the wheel no test-bed module, and the ``autocanary``
it installed must run the image's commands.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from dockerfile_model import REPO, Stage, parse

pytestmark = pytest.mark.integration

PLACEHOLDER_VENV = "VIRTUAL_ENV"


def _copy_sources(stage: Stage, build: Path) -> None:
    for copy in stage.of("COPY"):
        *sources, dest = copy.words()
        assert not any(s.startswith("--") for s in sources), f"line {copy.line}: flags unhandled"
        for source in sources:
            src = REPO / source.rstrip("/")
            if dest.endswith("/") and not source.endswith("/"):
                target = build / dest / src.name  # COPY a b ./  -> ./a ./b
            else:
                target = build / dest  # COPY src/ src/, COPY a/b a/b
            target.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(
                    src, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
                )
            else:
                shutil.copy2(src, target)


def _run(argv: list[str], **kw: object) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False, **kw)  # type: ignore[call-overload]
    assert result.returncode == 0, (
        f"{argv} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return str(result.stdout)


def test_builder_stage_installs_autocanary_with_exactly_the_pinned_dependencies(
    tmp_workdir: Path,
) -> None:
    dockerfile = parse()
    builder = dockerfile.stage("builder")
    image_venv = builder.env()[PLACEHOLDER_VENV]
    runs = builder.of("RUN")
    for run in runs:
        absolute = re.findall(r"(?<![\w$}.])/[\w./-]+", run.args)
        assert absolute == [], f"line {run.line}: absolute paths {absolute} (use $VIRTUAL_ENV)"
    assert image_venv in dockerfile.final.of("COPY")[0].words()

    build = tmp_workdir / "build"
    venv = tmp_workdir / "venv"
    build.mkdir()
    _copy_sources(builder, build)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(builder.env())
    env[PLACEHOLDER_VENV] = str(venv)
    env["PIP_NO_INDEX"] = "1"
    env["PIP_FIND_LINKS"] = str(_wheelhouse())
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for run in runs:
        _run(["/bin/sh", "-c", run.args], cwd=build, env=env)

    # The wheel holds the product only: the test bed (testbed/) is development code.
    (wheel,) = (build / "dist").glob("autocanary-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.namelist()
    assert any(n.startswith("autocanary/daemon") for n in shipped), shipped
    assert [n for n in shipped if "testbed" in n] == []

    # Exactly the pins: nothing unpinned slipped in, no stale pin left behind.
    listing = _run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m, json; "
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))",
        ]
    )
    installed = {_canonical(name): version for name, version in json.loads(listing).items()}
    assert installed.pop("autocanary") == _project_version()
    pins = _pins()
    differing = {k: (installed[k], pins[k]) for k in installed.keys() & pins.keys()}
    assert installed == pins, (
        f"installed but not pinned: {sorted(installed.keys() - pins.keys())}; "
        f"pinned but not installed: {sorted(pins.keys() - installed.keys())}; "
        f"(installed, pinned): { {k: v for k, v in differing.items() if v[0] != v[1]} }. "
        "Regenerate: .venv/bin/python hack/lock_image_deps.py > deploy/constraints.txt"
    )
    for tool in ("pip", "setuptools", "wheel", "hatchling"):
        assert tool not in installed, f"{tool} would be copied into the final image"

    # The image's commands, from the installed entry point.
    autocanary = str(venv / "bin" / "autocanary")
    clean = {"PATH": f"{venv / 'bin'}{os.pathsep}/usr/bin:/bin", "HOME": str(tmp_workdir)}
    final = dockerfile.final
    command = final.of("ENTRYPOINT")[0].exec_form() + final.of("CMD")[0].exec_form()
    assert command[0] == "autocanary"
    usage = _run([autocanary, *command[1:], "--help"], env=clean)
    assert "--config" in usage
    assert "validate" in _run([autocanary, "--help"], env=clean)
    config = REPO / "deploy" / "config.yaml"
    assert f"{config}: valid" in _run([autocanary, "validate", str(config)], env=clean)
    assert "VERSION" in _run([autocanary, "testpage", "--help"], env=clean)
    assert "--target" in _run([autocanary, "probe", "--help"], env=clean)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "deploy" / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[_canonical(name)] = version
    return pins


def _project_version() -> str:
    with (REPO / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def _wheelhouse() -> Path:
    """The wheels hack/setup.sh downloaded for these pins (same key as there)."""
    python = str(sys.version_info[:2])
    pins = (REPO / "deploy" / "constraints.txt").read_bytes()
    key = hashlib.sha256(python.encode() + b"\n" + pins).hexdigest()[:12]
    root = os.environ.get("AUTOCANARY_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "autocanary"
    )
    wheelhouse = Path(root) / "wheelhouse" / key
    if not (wheelhouse / ".complete").exists():
        pytest.fail(
            f"no wheelhouse for deploy/constraints.txt at {wheelhouse}: run hack/setup.sh",
            pytrace=False,
        )
    return wheelhouse
