"""Binomial tails and bounds for telling an error rate's chance variation from a breach."""

from __future__ import annotations

import math

import pytest

from autocanary.analysis import noise


def pmf(k: int, n: int, p: float) -> float:
    log = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
    return (
        math.exp(log + k * math.log(p) + (n - k) * math.log1p(-p))
        if 0 < p < 1
        else float((p == 0 and k == 0) or (p == 1 and k == n))
    )


@pytest.mark.parametrize(
    ("k", "n", "p"), [(0, 10, 0.3), (1, 100, 0.01), (6, 225, 0.01), (4, 50, 0.2), (50, 50, 0.9)]
)
def test_the_tails_are_the_sums_of_the_binomial_terms(k: int, n: int, p: float) -> None:
    assert noise.at_least(k, n, p) == pytest.approx(sum(pmf(i, n, p) for i in range(k, n + 1)))
    assert noise.at_most(k, n, p) == pytest.approx(sum(pmf(i, n, p) for i in range(k + 1)))


def test_the_edges() -> None:
    assert noise.at_least(0, 10, 0.5) == 1.0
    assert noise.at_least(11, 10, 0.5) == 0.0
    assert noise.at_least(1, 10, 0.0) == 0.0
    assert noise.at_least(3, 10, 1.0) == 1.0
    assert noise.upper_bound(5, 5, 0.01) == 1.0
    assert noise.upper_bound(0, 0, 0.01) == 1.0


def test_large_windows_use_the_normal_approximation_and_agree_with_the_exact_tail() -> None:
    n, p = 200_000, 0.01  # variance 1980, beyond NORMAL_FROM
    exact = sum(pmf(i, n, p) for i in range(2100, 2400))  # the tail beyond is negligible
    assert noise.at_least(2100, n, p) == pytest.approx(exact, rel=0.05)


def test_the_upper_bound_is_clopper_pearsons() -> None:
    # None seen in 100: the rate whose chance of zero is 5% (about the "rule of three").
    assert noise.upper_bound(0, 100, 0.05) == pytest.approx(1 - 0.05 ** (1 / 100), rel=1e-6)
    bound = noise.upper_bound(2, 675, 0.01)
    assert noise.at_most(2, 675, bound) == pytest.approx(0.01, rel=1e-4)
    assert 2 / 675 < bound < 0.013


@pytest.mark.parametrize(("n", "p"), [(225, 0.01), (300, 0.05), (1000, 0.001)])
def test_at_a_rate_on_the_threshold_a_test_fails_at_most_significance_of_the_time(
    n: int, p: float
) -> None:
    alpha = 0.01
    failing = sum(pmf(k, n, p) for k in range(n + 1) if noise.at_least(k, n, p) < alpha)
    assert failing <= alpha
