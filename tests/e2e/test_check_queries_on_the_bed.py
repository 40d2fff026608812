"""``validate --check-queries`` passes the shipped configs against the test bed's Prometheus."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from e2e_helpers import StackFactory

from autocanary_testbed.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

REPO = Path(__file__).parents[2]


@pytest.mark.parametrize("shipped", ["config/testpage.yaml", "config/minimal.yaml"])
def test_the_shipped_configs_pass_check_queries_on_the_bed(
    stack_factory: StackFactory, tmp_path: Path, shipped: str
) -> None:
    stack = stack_factory(daemon=False)
    # The bed's namespace is its own; everything else is as shipped.
    config = tmp_path / Path(shipped).name
    config.write_text(
        (REPO / shipped).read_text().replace("namespace: demo", f"namespace: {stack.namespace}")
    )

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "autocanary",
                "validate",
                str(config),
                "--check-queries",
                "--prometheus",
                stack.prometheus.url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    # The probe's series reach Prometheus a scrape or two after the stack is up.
    wait_until(lambda: check().returncode == 0, timeout=60, what="check-queries passing")
    result = check()
    assert result.returncode == 0, result.stderr
    assert "and its queries: valid (1 rollout(s): testpage)" in result.stdout
