"""Monte Carlo under the nulls: the e-processes cross no more often than alpha and beta.

Runs are vectorised through the same ``advance``/``decide`` the daemon's
``update`` uses. Each run keeps going after any crossing, so what is measured is
"ever crossed within the horizon", the event Ville's inequality bounds; the
canary weight changes half-way, as a ramp would. The harm e-value includes
the change-point mixture; polls are tempered by the default noise floor. The
allowance is three binomial standard errors over 2,000 runs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from autocanary.judge import sequential
from autocanary.judge.sequential import SequentialConfig

RUNS = 2000
POLLS = 40
CONFIG = SequentialConfig()
GRID = CONFIG.grid()


def odds_to_rate(odds: float) -> float:
    return odds / (1 + odds)


def crossing_rates(psi: float, stable_rate: float, per_poll: int, seed: int) -> tuple[float, float]:
    """Shares of runs whose harm / safety e-value ever reached 1/alpha / 1/beta."""
    rng = np.random.default_rng(seed)
    canary_rate = odds_to_rate(psi * stable_rate / (1 - stable_rate))
    evidence = sequential.empty_evidence([GRID], (RUNS,))
    harmed = np.zeros(RUNS, dtype=bool)
    safe = np.zeros((RUNS, 1), dtype=bool)
    for poll in range(POLLS):
        weight = 0.1 if poll < POLLS // 2 else 0.5
        n = rng.poisson(per_poll * weight, RUNS)
        m = rng.poisson(per_poll * (1 - weight), RUNS)
        table = np.stack(
            [n, rng.binomial(n, canary_rate), m, rng.binomial(m, stable_rate)], axis=-1
        )[:, None, :]
        evidence = sequential.advance([GRID], evidence, table, poll + 1, CONFIG.noise_floor)
        decided = sequential.decide(
            GRID, evidence, safe, np.zeros(RUNS, bool), alpha=CONFIG.alpha, beta=CONFIG.beta
        )
        harmed |= decided.log_harm[:, 0] >= math.log(1 / CONFIG.alpha)
        safe = decided.safe
    return float(harmed.mean()), float(safe[:, 0].mean())


def allowance(rate: float) -> float:
    return rate + 3 * math.sqrt(rate * (1 - rate) / RUNS)


@pytest.mark.parametrize(
    ("psi", "stable_rate", "per_poll"),
    [
        (1.0, 0.01, 3000),  # A/A, rare errors
        (1.2, 0.01, 3000),  # the boundary of the harm null
        (1.2, 0.10, 3000),  # the boundary with common events (latency): exact FNCH, no shortcut
    ],
)
def test_false_rollbacks_stay_under_alpha(psi: float, stable_rate: float, per_poll: int) -> None:
    harmed, _ = crossing_rates(psi, stable_rate, per_poll, seed=int(psi * 100 + stable_rate * 1000))
    assert harmed <= allowance(CONFIG.alpha)


@pytest.mark.parametrize("stable_rate", [0.01, 0.10])
def test_false_promotions_stay_under_beta_at_the_safety_boundary(stable_rate: float) -> None:
    _, promoted = crossing_rates(GRID.psi1_effective, stable_rate, 3000, seed=99)
    assert promoted <= allowance(CONFIG.beta)


def test_the_same_runs_do_decide_when_the_truth_is_clear() -> None:
    # guards the tests above against passing because nothing ever crosses
    harmed, _ = crossing_rates(3.0, 0.01, 3000, seed=5)
    _, promoted = crossing_rates(1.0, 0.01, 3000, seed=6)
    assert harmed > 0.99
    assert promoted > 0.5
