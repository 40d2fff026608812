"""Step arithmetic: canary and stable pods per step."""

from __future__ import annotations

import pytest

from autocanary.config.models import Percentage, StepConfig
from autocanary.rollout.steps import canary_pods, plan, stable_pods


@pytest.mark.parametrize(
    ("size", "total", "pods"),
    [
        (Percentage(0.1), 3, 1),  # rounds up: 0.3 pods is one pod
        (Percentage(0.5), 4, 2),
        (Percentage(0.5), 5, 3),
        (Percentage(1.0), 7, 7),
        (Percentage(0.01), 1, 1),  # at least one pod
        (Percentage(0.07), 100, 7),  # 0.07 * 100 is 7.000000000000001: still 7, not 8
        (Percentage(0.1), 10, 1),
        (Percentage(0.33), 3, 1),
        (Percentage(0.34), 3, 2),
        (1, 10, 1),
        (3, 10, 3),
        (12, 10, 10),  # capped at the total
        (5, 1, 1),
    ],
)
def test_canary_pods(size: int | Percentage, total: int, pods: int) -> None:
    assert canary_pods(size, total) == pods


@pytest.mark.parametrize("total", [0, -1])
def test_canary_pods_needs_a_total(total: int) -> None:
    with pytest.raises(ValueError, match="at least 1 replica"):
        canary_pods(1, total)


def test_plan_of_the_default_steps() -> None:
    steps = [
        StepConfig(canary=1),
        StepConfig(canary=Percentage(0.1)),
        StepConfig(canary=Percentage(0.5)),
        StepConfig(canary=Percentage(1.0)),
    ]
    assert plan(steps, 3) == [1, 1, 2, 3]
    assert plan(steps, 20) == [1, 2, 10, 20]
    assert plan(steps, 1) == [1, 1, 1, 1]


@pytest.mark.parametrize(
    ("total", "canary", "scale_down", "stable"),
    [
        (10, 1, True, 9),
        (10, 10, True, 0),
        (10, 12, True, 0),  # never negative
        (10, 1, False, 10),  # surge: the stable keeps the total
        (10, 10, False, 10),
    ],
)
def test_stable_pods(total: int, canary: int, scale_down: bool, stable: int) -> None:
    assert stable_pods(total, canary, scale_down_stable=scale_down) == stable


def test_scale_down_keeps_the_total_constant() -> None:
    for total in range(1, 12):
        for canary in range(1, total + 1):
            assert canary + stable_pods(total, canary, scale_down_stable=True) == total
