"""The exact conditional likelihood and the e-processes against scipy and closed forms.

What is invariant, and what is not: given the polls, the evidence is a sum of
per-poll log-likelihood ratios, so it does not depend on the order of the polls
and polls without information add nothing. Merging or splitting polls is *not*
invariant for the exact FNCH likelihood in general (conditioning on each poll's
total keeps a different part of the information); it is in the Poisson limit,
where x | E is binomial with p = r psi / (1 + r psi) and a product of such
binomials with a constant ratio r is the merged binomial's likelihood. Both are
tested below.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import nchypergeom_fisher

from autocanary.judge import eprocess
from autocanary.judge.eprocess import Grid

GRID = Grid(1.2, 1.5)


def scipy_llr(n: int, x: int, m: int, y: int, psis: np.ndarray, psi_ref: float) -> np.ndarray:
    e = x + y
    ref = nchypergeom_fisher.logpmf(x, n + m, n, e, psi_ref)
    return np.array([nchypergeom_fisher.logpmf(x, n + m, n, e, p) - ref for p in psis])


@pytest.mark.parametrize(
    ("n", "x", "m", "y"),
    [
        (30, 1, 270, 2),
        (300, 15, 2700, 27),
        (1500, 130, 1500, 170),
        (60, 60, 540, 0),  # every event on the canary
        (60, 0, 540, 9),  # none on the canary
        (5, 3, 7, 7),  # the support is cut on both sides
        (1200, 80, 10800, 1100),
        (12000, 700, 108000, 11000),  # wide support: several blocks of the matrix product
    ],
)
def test_poll_loglik_matches_scipy_logpmf(n: int, x: int, m: int, y: int) -> None:
    got = eprocess.loglik_increment(GRID, np.array([n, x, m, y]))
    psis = np.exp(GRID.thetas[::7])
    want = scipy_llr(n, x, m, y, psis, GRID.psi0)
    # scipy's pmf underflows to 0 far in the tails, where ours stays exact and finite
    finite = np.isfinite(want)
    assert finite.sum() >= 10
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got[::7][finite], want[finite], rtol=1e-9, atol=1e-8)


def test_log_partition_exact_over_wide_support_against_direct_sum() -> None:
    n, m, e = 6000, 6000, 6000
    k = np.arange(0, e + 1)

    def log_comb(a: int, b: int) -> float:
        return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)

    logc = np.array([log_comb(n, int(i)) + log_comb(m, int(e - i)) for i in k])
    thetas = GRID.thetas
    direct = logsumexp(logc[None, :] + k[None, :] * thetas[:, None], axis=1)
    got = eprocess.log_partition(np.array([n]), np.array([m]), np.array([e]), thetas)[0]
    # equal up to the constant the weights are normalised by
    diff = got - direct
    np.testing.assert_allclose(diff - diff[0], 0.0, atol=1e-7)


def test_single_event_has_the_closed_form() -> None:
    # one event: P(it is the canary's) = n psi / (n psi + m)
    n, m = 40, 360
    got = eprocess.loglik_increment(GRID, np.array([n, 1, m, 0]))
    psi = np.exp(GRID.thetas)
    want = np.log(n * psi / (n * psi + m)) - math.log(n * 1.2 / (n * 1.2 + m))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_binomial_limit_with_constant_ratio() -> None:
    # huge n, m with few events: x | E is Bin(E, r psi / (1 + r psi))
    n, m, x, y = 10**8, 9 * 10**8, 14, 30
    r = n / m
    psi = np.exp(GRID.thetas)
    p, p0 = r * psi / (1 + r * psi), r * 1.2 / (1 + r * 1.2)
    want = x * np.log(p / p0) + y * np.log((1 - p) / (1 - p0))
    got = eprocess.loglik_increment(GRID, np.array([n, x, m, y]))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_splitting_polls_is_invariant_in_the_poisson_limit() -> None:
    merged = eprocess.loglik_increment(GRID, np.array([10**8, 12, 9 * 10**8, 40]))
    parts = np.array(
        [[4 * 10**7, 5, 36 * 10**7, 11], [6 * 10**7, 7, 54 * 10**7, 29]]
    )  # the same ratio r in both parts
    split = eprocess.loglik_increment(GRID, parts).sum(axis=0)
    np.testing.assert_allclose(split, merged, atol=1e-5)


def test_evidence_ignores_poll_order_and_empty_polls() -> None:
    rng = np.random.default_rng(7)
    polls = np.stack(
        [
            rng.integers(20, 400, 12),
            rng.integers(0, 10, 12),
            rng.integers(200, 4000, 12),
            rng.integers(0, 40, 12),
        ],
        axis=1,
    )
    polls[:, 1] = np.minimum(polls[:, 1], polls[:, 0])
    forward = eprocess.loglik_increment(GRID, polls).sum(axis=0)
    shuffled = eprocess.loglik_increment(GRID, polls[rng.permutation(12)]).sum(axis=0)
    empty = eprocess.loglik_increment(GRID, np.array([[300, 0, 2700, 0], [0, 0, 500, 3]]))
    np.testing.assert_allclose(shuffled, forward, rtol=1e-12, atol=1e-10)
    assert np.all(empty == 0.0)


def test_swapping_the_versions_inverts_the_ratio() -> None:
    grid = Grid(1.0, 1.0, points=40, u_max=2.0)  # symmetric around psi = 1
    a = eprocess.loglik_increment(grid, np.array([300, 20, 500, 18]))
    b = eprocess.loglik_increment(grid, np.array([500, 18, 300, 20]))
    i0 = grid.harm_index
    np.testing.assert_allclose(a[i0 : i0 + 41], b[i0 - 40 : i0 + 1][::-1], atol=1e-9)


def test_mixture_evalues_match_a_direct_computation() -> None:
    polls = [(150, 5, 1350, 14), (150, 4, 1350, 9), (160, 6, 1340, 16)]
    u = GRID.step * np.arange(1, GRID.points + 1)
    logw = -(u**2) / (2 * 0.7**2)
    logw -= logsumexp(logw)
    harm_alt = 1.2 * np.exp(u)
    harm = sum(scipy_llr(*p, harm_alt, 1.2) for p in polls)
    psi1 = GRID.psi1_effective
    safety = sum(scipy_llr(*p, psi1 * np.exp(-u), psi1) for p in polls)
    evidence = eprocess.loglik_increment(GRID, np.array(polls)).sum(axis=0)
    want_harm = logsumexp(logw + harm)
    assert eprocess.harm_log_evalue(GRID, evidence) == pytest.approx(want_harm, abs=1e-8)
    assert eprocess.safety_log_evalue(GRID, evidence) == pytest.approx(
        logsumexp(logw + safety), abs=1e-8
    )


def test_one_point_mixture_is_the_likelihood_ratio() -> None:
    grid = Grid(1.2, 1.2, points=1, u_max=math.log(2.5))  # alternative 3.0 = 1.2 * 2.5
    polls = np.array([[50, 1, 450, 0], [80, 0, 720, 1], [50, 1, 450, 0]])
    evidence = eprocess.loglik_increment(grid, polls).sum(axis=0)

    def p(psi: float, n: int, m: int) -> float:
        return n * psi / (n * psi + m)

    want = math.log(p(3.0, 50, 450) / p(1.2, 50, 450)) * 2 + math.log(
        (1 - p(3.0, 80, 720)) / (1 - p(1.2, 80, 720))
    )
    assert eprocess.harm_log_evalue(grid, evidence) == pytest.approx(want, abs=1e-12)


def test_grid_layout() -> None:
    assert math.exp(GRID.thetas[GRID.harm_index]) == pytest.approx(1.2, rel=1e-14)
    assert 1.5 - GRID.step * 1.5 < GRID.psi1_effective <= 1.5
    assert GRID.thetas[GRID.harm_index + GRID.points] == pytest.approx(math.log(1.2) + 2.5)
    assert GRID.safety_index - GRID.points >= 0
    assert np.exp(GRID.log_weights).sum() == pytest.approx(1.0)
    assert Grid(1.2, 1.2).psi1_effective == pytest.approx(1.2)
    with pytest.raises(ValueError, match="psi1"):
        Grid(1.2, 1.1)


def test_confidence_sequence_covers_the_truth_and_narrows() -> None:
    rng = np.random.default_rng(3)
    n = rng.poisson(3000, 40)
    m = rng.poisson(27000, 40)
    x = rng.binomial(n, 0.02)  # odds ratio about 2.02 against 1%
    y = rng.binomial(m, 0.01)
    table = np.stack([n, x, m, y], axis=1)
    evidence = eprocess.loglik_increment(GRID, table).sum(axis=0)
    low, high = eprocess.confidence_sequence(GRID, evidence, 0.05)
    assert low < 2.02 < high
    assert low > 1.5
    assert high < 3.0
    first = eprocess.loglik_increment(GRID, table[:2]).sum(axis=0)
    low2, high2 = eprocess.confidence_sequence(GRID, first, 0.05)
    assert low2 < low
    assert high2 > high


def test_confidence_sequence_without_data_is_the_whole_grid() -> None:
    low, high = eprocess.confidence_sequence(GRID, np.zeros((2, GRID.size)), 0.05)
    assert list(low) == [0.0, 0.0]
    assert list(high) == [math.inf, math.inf]


def test_mantel_haenszel_recovers_a_common_odds_ratio() -> None:
    # two strata with different weights, both with odds ratio 2
    table = np.array([[100, 20, 900, 100], [500, 50, 500, 26]])
    terms = eprocess.mantel_haenszel_terms(table).sum(axis=0)
    assert terms[0] / terms[1] == pytest.approx(2.0, rel=0.06)
