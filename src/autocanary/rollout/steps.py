"""Step arithmetic: how many canary and stable pods each step runs.

Totals are fixed when a release starts (the stable's replica count then), so
a percentage always means the same number of pods for the whole release.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from autocanary.config.models import Percentage, StepConfig


def canary_pods(size: int | Percentage, total: int) -> int:
    """Canary pods for one step: a count, or a percentage rounded up, at least 1, at most total."""
    if total < 1:
        raise ValueError(f"a release needs a total of at least 1 replica, got {total}")
    # Rounding up: 10% of 3 pods must still be one pod, never zero.
    pods = math.ceil(size.fraction * total - 1e-9) if isinstance(size, Percentage) else size
    return min(max(pods, 1), total)


def plan(steps: Sequence[StepConfig], total: int) -> list[int]:
    """Canary pods of every step, for a release whose total is ``total``."""
    return [canary_pods(step.canary, total) for step in steps]


def stable_pods(total: int, canary: int, *, scale_down_stable: bool) -> int:
    """Stable pods beside ``canary`` canary pods: total minus canary, or the total when surging."""
    return max(total - canary, 0) if scale_down_stable else total


def weighted_pods(weight: int, total: int, headroom: float) -> int:
    """Canary pods to carry ``weight`` percent of the traffic the stable's ``total`` carries.

    ``ceil(total x weight/100 x (1 + headroom))``, at least 1 and at most the
    total (at 100% the canary carries what the whole stable did).
    """
    if total < 1:
        raise ValueError(f"a release needs a total of at least 1 replica, got {total}")
    pods = math.ceil(total * weight / 100 * (1 + headroom) - 1e-9)
    return min(max(pods, 1), total)
