"""The end-to-end stage: ``stack_factory`` builds a CanaryStack in a namespace of its own.

Each scenario gets the demo app, traffic, Prometheus, Alertmanager, a webhook
receiver and (unless asked otherwise) the daemon as a subprocess, on the
session's control plane. Everything is torn down after the test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import StackFactory

from autocanary_testbed.controlplane import ControlPlane
from autocanary_testbed.stack import CanaryStack, StackSettings


@pytest.fixture
def stack_factory(control_plane: ControlPlane, tmp_workdir: Path) -> Iterator[StackFactory]:
    """``make(daemon=True, **settings)`` starts a stack; ``settings`` override StackSettings.

    Each stack gets a namespace of its own unless ``namespace`` is given.
    """
    stacks: list[CanaryStack] = []

    def make(*, daemon: bool = True, **overrides: Any) -> CanaryStack:
        overrides.setdefault("namespace", f"e2e-{uuid.uuid4().hex[:8]}")
        settings = StackSettings(**overrides)
        stack = CanaryStack(control_plane, tmp_workdir / settings.namespace, settings)
        stacks.append(stack)
        stack.start(daemon=daemon)
        return stack

    try:
        yield make
    finally:
        for stack in reversed(stacks):
            stack.stop()
