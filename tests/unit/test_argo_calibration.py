"""bench/argo_calibration.py's model of argo-tuned's check, pinned where its answer is known.

The threshold the side-by-side bench gives Argo Rollouts comes from this
model, so it must fail nothing without errors, catch a canary failing far
above the threshold, and roll back only on a second failed measurement.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

BENCH = Path(__file__).parents[2] / "bench"


@pytest.fixture(scope="module")
def calibration() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("argo_calibration")
    finally:
        sys.path.remove(str(BENCH))


def test_a_canary_without_errors_is_never_rolled_back(calibration: ModuleType) -> None:
    rng = np.random.default_rng(0)
    assert not calibration.rolled_back(0.0, 0.0, 200, rng).any()


def test_a_canary_failing_far_above_the_threshold_is_always_rolled_back(
    calibration: ModuleType,
) -> None:
    rng = np.random.default_rng(0)
    assert calibration.rolled_back(0.03, 0.5, 200, rng).all()


def test_a_stricter_threshold_rolls_back_more_healthy_releases(calibration: ModuleType) -> None:
    rates = [
        calibration.rolled_back(t, 0.01, 4000, np.random.default_rng(1)).mean()
        for t in (0.02, 0.03, 0.05)
    ]
    assert rates[0] > rates[1] > rates[2]
    # The first matrix's 2.5% rolled back 2 of 20 healthy releases: the model puts
    # it between 3 and 15 in 100.
    assert 0.03 < calibration.rolled_back(0.025, 0.01, 4000, np.random.default_rng(2)).mean() < 0.15
