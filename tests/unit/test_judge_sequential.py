"""The judge's update: verdicts, reasons, persistence across restarts, warm-up, config."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pytest

from autocanary.errors import StateCorrupt
from autocanary.judge import (
    CounterSnapshot,
    JudgeState,
    JudgeVerdict,
    SequentialConfig,
    eprocess,
    sequential,
)
from autocanary.judge.report import Judgement

INF = math.inf
# No slowdown tolerance: canary and stable are compared at the same boundary (0.25s).
CONFIG = SequentialConfig(latency_thresholds=(0.25,), latency_tolerance=0.0)


@dataclass
class Version:
    """Cumulative counters of one simulated version (one series)."""

    requests: int = 0
    errors: int = 0
    fast: int = 0  # observations <= 0.25s

    def serve(self, rng: np.random.Generator, n: int, error_rate: float, slow_share: float) -> None:
        self.requests += n
        self.errors += int(rng.binomial(n, error_rate))
        self.fast += n - int(rng.binomial(n, slow_share))

    def snapshot(self) -> CounterSnapshot:
        buckets = {0.25: float(self.fast), INF: float(self.requests)}
        return CounterSnapshot.single(float(self.requests), float(self.errors), buckets)


@dataclass
class Release:
    """A canary and a stable served by one seeded traffic source."""

    canary_errors: float
    seed: int = 1
    per_poll: int = 3000
    weight: float = 0.1
    canary: Version = field(default_factory=Version)
    stable: Version = field(default_factory=Version)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def poll(self) -> tuple[CounterSnapshot, CounterSnapshot]:
        n = int(self.rng.poisson(self.per_poll * self.weight))
        m = int(self.rng.poisson(self.per_poll * (1 - self.weight)))
        self.canary.serve(self.rng, n, self.canary_errors, 0.08)
        self.stable.serve(self.rng, m, 0.01, 0.08)
        return self.canary.snapshot(), self.stable.snapshot()


def run(release: Release, polls: int, config: SequentialConfig = CONFIG) -> list[Judgement]:
    state = sequential.initial(config, release.canary.snapshot(), release.stable.snapshot())
    out = []
    for _ in range(polls):
        state, judgement = sequential.update(config, state, *release.poll())
        out.append(judgement)
        if judgement.verdict is not JudgeVerdict.CONTINUE:
            break
    return out


def test_a_five_times_error_rate_is_rolled_back_with_a_reason() -> None:
    judgements = run(Release(canary_errors=0.05), polls=10)
    last = judgements[-1]
    assert last.verdict is JudgeVerdict.ROLLBACK
    assert len(judgements) <= 2
    errors = last.metrics[0]
    assert errors.harmful
    assert errors.harm_threshold == pytest.approx(40.0)  # 2 metrics, alpha 0.05
    assert errors.safety_threshold == pytest.approx(20.0)  # promotion needs only 1/beta
    assert errors.ci_low > 1.2
    assert last.reason.startswith("errors: canary error odds")
    assert "harm e-value" in last.reason
    assert "95% simultaneous CS" in last.reason


def test_an_identical_canary_is_promoted_and_never_rolled_back() -> None:
    judgements = run(Release(canary_errors=0.01, per_poll=20000), polls=60)
    last = judgements[-1]
    assert last.verdict is JudgeVerdict.PROMOTE
    assert all(m.safe for m in last.metrics)
    assert all(m.ci_low < 1.0 < m.ci_high for m in last.metrics)
    assert last.reason.startswith("safety proven for every metric")


def test_an_undecided_poll_says_where_the_evidence_stands() -> None:
    (first, *_) = run(Release(canary_errors=0.01, per_poll=500), polls=1)
    assert first.verdict is JudgeVerdict.CONTINUE
    assert first.reason.startswith("undecided: errors")
    assert "latency>0.25s" in first.reason
    assert first.poll.canary_requests + first.poll.stable_requests > 0


def test_state_round_trip_through_json_mid_stream_changes_nothing() -> None:
    straight = Release(canary_errors=0.015, seed=11)
    resumed = Release(canary_errors=0.015, seed=11)
    state_a = sequential.initial(CONFIG, straight.canary.snapshot(), straight.stable.snapshot())
    state_b = sequential.initial(CONFIG, resumed.canary.snapshot(), resumed.stable.snapshot())
    for _ in range(8):
        state_a, judgement_a = sequential.update(CONFIG, state_a, *straight.poll())
        text = json.dumps(state_b.to_dict())
        state_b = JudgeState.from_dict(json.loads(text))
        state_b, judgement_b = sequential.update(CONFIG, state_b, *resumed.poll())
        assert judgement_b == judgement_a
    assert state_b == state_a


def test_a_repeated_poll_after_a_restart_adds_nothing() -> None:
    release = Release(canary_errors=0.01)
    state = sequential.initial(CONFIG, release.canary.snapshot(), release.stable.snapshot())
    snapshots = release.poll()
    once, _ = sequential.update(CONFIG, state, *snapshots)
    twice, judgement = sequential.update(CONFIG, once, *snapshots)
    assert [m.evidence for m in twice.metrics] == [m.evidence for m in once.metrics]
    assert [m.totals for m in twice.metrics] == [m.totals for m in once.metrics]
    assert judgement.poll.canary_requests == 0


def test_skip_moves_the_counters_without_evidence() -> None:
    release = Release(canary_errors=0.5)
    state = sequential.initial(CONFIG, release.canary.snapshot(), release.stable.snapshot())
    state = sequential.skip(state, *release.poll())  # a terrible warm-up, ignored
    assert all(not any(m.evidence) for m in state.metrics)
    release.canary_errors = 0.01
    _, judgement = sequential.update(CONFIG, state, *release.poll())
    assert judgement.verdict is JudgeVerdict.CONTINUE
    assert judgement.metrics[0].canary_requests == judgement.poll.canary_requests


def test_critical_guard_trips_without_statistics_and_only_relative_to_the_stable() -> None:
    config = SequentialConfig(alpha=1e-12, critical_error_excess=0.2)  # the e-process would wait
    judgements = run(Release(canary_errors=0.4, per_poll=600), polls=5, config=config)
    last = judgements[-1]
    assert last.verdict is JudgeVerdict.ROLLBACK
    assert last.critical
    assert last.reason.startswith("errors: critical guard, canary error share")
    assert "over the stable's" in last.reason
    # an outage both versions share: 40% errors everywhere is no reason to blame the canary
    shared = Release(canary_errors=0.4, per_poll=600)
    original = shared.stable.serve
    shared.stable.serve = lambda rng, n, _rate, slow: original(rng, n, 0.4, slow)  # type: ignore[method-assign]
    assert not any(j.critical for j in run(shared, 5, config))
    off = SequentialConfig(alpha=1e-12)  # off by default
    assert not any(j.critical for j in run(Release(canary_errors=0.4, per_poll=600), 5, off))


def test_latency_thresholds_from_stable_quantiles_are_fixed_at_start() -> None:
    config = SequentialConfig(latency_quantiles=(0.9,), latency_tolerance=0.0)
    stable = CounterSnapshot.single(1000, 10, {0.1: 600, 0.2: 905, 0.4: 990, INF: 1000})
    state = sequential.initial(config, CounterSnapshot({}), stable)
    assert state.thresholds == (0.2,)
    assert [m.name for m in state.metrics] == ["errors", "latency>0.2s"]


def test_a_latency_tolerance_is_a_slowdown_tested_at_a_bucket_pair() -> None:
    # 10%: the stable's 0.2s is paired with the first boundary >= 0.22s, i.e. 0.25s (25%)
    stable = CounterSnapshot.single(1000, 10, {0.1: 600, 0.2: 905, 0.25: 950, 0.4: 990, INF: 1000})
    config = SequentialConfig(latency_thresholds=(0.2,), latency_tolerance=0.1)
    state = sequential.initial(config, CounterSnapshot({}), stable)
    assert state.latency_pairs == ((0.2, 0.25),)
    assert state.thresholds == (0.2, 0.25)
    assert [m.name for m in state.metrics] == ["errors", "latency>0.25s/0.2s"]
    assert state.grids()[1].psi0 == 1.0  # the pair carries the tolerance
    with pytest.raises(ValueError, match=r"no bucket boundary at or above 0\.44"):
        sequential.initial(
            SequentialConfig(latency_thresholds=(0.4,), latency_tolerance=0.1),
            CounterSnapshot({}),
            stable,
        )


def test_a_slowdown_within_the_tolerance_is_not_rolled_back_and_beyond_it_is() -> None:
    """Lognormal latencies in fine buckets: 1.15x slower passes a 20% tolerance, 1.6x fails."""
    from scipy.stats import norm

    bounds = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)

    def counts(rng: np.random.Generator, n: int, slowdown: float) -> dict[float, int]:
        cdf = norm.cdf((np.log(np.array(bounds)) - np.log(0.1 * slowdown)) / 0.5)
        cells = rng.multinomial(n, np.diff(cdf, prepend=0.0, append=1.0))
        return dict(zip((*bounds, INF), np.cumsum(cells).tolist(), strict=True))

    def verdict(slowdown: float) -> JudgeVerdict:
        rng = np.random.default_rng(3)
        config = SequentialConfig(latency_quantiles=(0.99,), latency_tolerance=0.2)
        cum = {"c": dict.fromkeys((*bounds, INF), 0), "s": dict.fromkeys((*bounds, INF), 0)}

        def snap(key: str) -> CounterSnapshot:
            b = {le: float(v) for le, v in cum[key].items()}
            return CounterSnapshot.single(b[INF], 0.0, b)

        for le, v in counts(rng, 100_000, 1.0).items():
            cum["s"][le] += v
        state = sequential.initial(config, snap("c"), snap("s"))
        assert state.latency_pairs == ((0.25, 0.3),)
        for _ in range(40):
            for key, n, slow in (("c", 2000, slowdown), ("s", 18000, 1.0)):
                for le, v in counts(rng, n, slow).items():
                    cum[key][le] += v
            state, judgement = sequential.update(config, state, snap("c"), snap("s"))
            if judgement.verdict is not JudgeVerdict.CONTINUE:
                return judgement.verdict
        return JudgeVerdict.CONTINUE

    assert verdict(1.15) is not JudgeVerdict.ROLLBACK  # (no errors at all: never proven safe)
    assert verdict(1.6) is JudgeVerdict.ROLLBACK


def test_hypotheses_stay_those_of_release_start() -> None:
    release = Release(canary_errors=0.01)
    state = sequential.initial(CONFIG, release.canary.snapshot(), release.stable.snapshot())
    changed = SequentialConfig(tolerance=0.5, safe_ratio=2.0, latency_thresholds=(0.25,))
    state, judgement = sequential.update(changed, state, *release.poll())
    assert state.psi0 == pytest.approx(1.2)
    assert judgement.metrics[0].psi0 == pytest.approx(1.2)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"tolerance": -0.1}, "tolerance"),
        ({"safe_ratio": 1.1}, "safe_ratio"),
        ({"latency_thresholds": (0.2,), "latency_quantiles": (0.9,)}, "not both"),
        ({"latency_thresholds": (0.0,)}, "positive"),
        ({"latency_quantiles": (1.0,)}, "quantiles"),
        ({"critical_error_excess": 1.5}, "critical"),
        ({"latency_tolerance": -0.1}, "latency tolerance"),
        ({"noise_floor": -1.0}, "noise_floor"),
        ({"grid_points": 0}, "grid"),
    ],
)
def test_config_is_validated(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SequentialConfig(**settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.update(version=99),
        lambda d: d.pop("metrics"),
        lambda d: d["metrics"][0].update(evidence=[0.0, 1.0]),
        lambda d: d["canary"].update({"": [1, 2]}),
        lambda d: d["metrics"][0].update(totals=[1, 2]),
    ],
)
def test_damaged_state_is_reported_as_corrupt(damage: object) -> None:
    release = Release(canary_errors=0.01)
    state = sequential.initial(CONFIG, release.canary.snapshot(), release.stable.snapshot())
    data = json.loads(json.dumps(state.to_dict()))
    damage(data)  # type: ignore[operator]
    with pytest.raises(StateCorrupt):
        JudgeState.from_dict(data)


def test_batch_decision_matches_the_single_update() -> None:
    release = Release(canary_errors=0.03, seed=5)
    state = sequential.initial(CONFIG, release.canary.snapshot(), release.stable.snapshot())
    state, judgement = sequential.update(CONFIG, state, *release.poll())
    grid = state.grid()
    one = sequential._state_evidence(state)
    evidence = sequential.Evidence(*(np.array([a] * 3) for a in one))
    decided = sequential.decide(
        grid,
        evidence,
        np.zeros((3, 2), bool),
        np.zeros(3, bool),
        alpha=CONFIG.alpha,
        beta=CONFIG.beta,
    )
    assert [sequential.CONTINUE, sequential.ROLLBACK, sequential.PROMOTE][
        int(decided.verdict[0])
    ] == {"continue": 0, "rollback": 1, "promote": 2}[judgement.verdict]
    assert math.exp(decided.log_harm[2, 0]) == pytest.approx(judgement.metrics[0].harm_evalue)


def test_alpha_and_beta_are_those_of_release_start() -> None:
    release = Release(canary_errors=0.01)
    state = sequential.initial(CONFIG, release.canary.snapshot(), release.stable.snapshot())
    looser = SequentialConfig(alpha=0.5, beta=0.5, latency_thresholds=(0.25,))
    state, judgement = sequential.update(looser, state, *release.poll())
    assert (state.alpha, state.beta) == (0.05, 0.05)
    assert judgement.metrics[0].harm_threshold == pytest.approx(40.0)
    assert judgement.metrics[0].safety_threshold == pytest.approx(20.0)


def test_a_regression_after_safety_was_proven_is_caught_by_the_change_point_mixture() -> None:
    """Evidence of safety from before a regression must not hold its detection back."""
    release = Release(canary_errors=0.01, per_poll=6000, seed=8)
    state = sequential.initial(CONFIG, release.canary.snapshot(), release.stable.snapshot())
    for _ in range(40):  # 40 good polls: lots of evidence that psi is about 1
        state, judgement = sequential.update(CONFIG, state, *release.poll())
        assert judgement.verdict is not JudgeVerdict.ROLLBACK
    release.canary_errors = 0.05
    late = 0
    while judgement.verdict is not JudgeVerdict.ROLLBACK and late < 10:
        state, judgement = sequential.update(CONFIG, state, *release.poll())
        late += 1
    assert judgement.verdict is JudgeVerdict.ROLLBACK
    # the e-process from release start alone is still far from the threshold
    evidence = np.array([m.evidence for m in state.metrics])
    main = eprocess.harm_log_evalue(state.grid(), evidence)[0]
    assert main < math.log(2 / CONFIG.alpha)
    assert late <= 4


def test_the_noise_estimate_finds_the_between_poll_variance() -> None:
    rng = np.random.default_rng(4)
    polls, tau = 400, 0.5
    information = rng.uniform(5, 50, polls)
    estimates = rng.normal(0.0, np.sqrt(1 / information + tau**2))
    sums = np.array(
        [
            polls,
            information.sum(),
            (information**2).sum(),
            (information * estimates).sum(),
            (information * estimates**2).sum(),
        ]
    )
    assert eprocess.noise_variance(sums) == pytest.approx(tau**2, rel=0.25)
    # no noise beyond the sampling error: (about) zero, never negative
    quiet = rng.normal(0.0, np.sqrt(1 / information))
    sums[3:] = (information * quiet).sum(), (information * quiet**2).sum()
    assert 0.0 <= eprocess.noise_variance(sums) < 0.02
