"""Replays: the daemon's schedule and decisions over a simulated cluster, judged by a stand-in.

The evaluators here are in-memory implementations of backtest's own
``IntervalEvaluator`` and ``QuerySource`` protocols; the Prometheus-backed
path is exercised by tests/integration/test_backtest_prometheus.py.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from builders import T0, DictSource, interval_verdict, make_rollout

from autocanary.analysis import judging
from autocanary.analysis.thresholds import IntervalVerdict, plan
from autocanary.analysis.verdict import Verdict
from autocanary.backtest.evaluate import (
    CachingSource,
    DaemonEvaluator,
    Silence,
    default_evaluator,
)
from autocanary.backtest.replay import bounds, replay
from autocanary.backtest.report import Release, Replay, Variant
from autocanary.config.models import CheckConfig, RolloutConfig
from autocanary.errors import PrometheusUnavailable, QueryError
from autocanary.rollout.state import RolloutState

S = timedelta(seconds=1)
BASELINE = Variant("config")


class ScriptedEvaluator:
    """Verdicts from a function of time; records when it was asked and for which versions."""

    def __init__(self, verdict_at: Callable[[datetime], Verdict]) -> None:
        self.verdict_at = verdict_at
        self.calls: list[tuple[datetime, str, str]] = []

    def evaluate(self, state: RolloutState, at: datetime) -> IntervalVerdict:
        self.calls.append((at, state.canary_version, state.stable_version))
        return interval_verdict(self.verdict_at(at), at)

    def silences(self) -> list[Silence]:
        return []


def run(
    rollout: RolloutConfig,
    verdict_at: Callable[[datetime], Verdict],
    minutes: float = 30,
) -> tuple[Replay, ScriptedEvaluator]:
    evaluator = ScriptedEvaluator(verdict_at)
    release = Release("v2", T0, T0 + timedelta(minutes=minutes), "v2", "v1")
    return replay(rollout, release, BASELINE, evaluator, replicas=4), evaluator


def analysed(result: Replay) -> list[tuple[datetime, str | None]]:
    return [(e.at, e.verdict) for e in result.timeline if e.verdict is not None]


def events(result: Replay) -> list[tuple[datetime, str]]:
    return [(e.at, ev.reason) for e in result.timeline for ev in e.events]


def test_a_passing_release_is_promoted_when_its_holds_allow() -> None:
    rollout = make_rollout()  # interval 30s; steps 1, 50%, 100%, each held 1m
    result, evaluator = run(rollout, lambda _: "pass")
    assert result.outcome.decision == "promoted"
    assert result.outcome.at == T0 + timedelta(minutes=3)
    assert result.outcome.reason == "all 3 steps passed their analysis"
    assert events(result) == [
        (T0, "ReleaseDetected"),
        (T0 + 60 * S, "StepAdvanced"),
        (T0 + 120 * S, "StepAdvanced"),
        (T0 + 180 * S, "Promoting"),
        (T0 + 180 * S, "Promoted"),
    ]
    # The daemon's cadence: an interval after the pods are Ready, then one every
    # interval (decision.next_analysis_at), windows back to back.
    assert [at for at, _ in analysed(result)] == [
        T0 + 30 * S,
        T0 + 60 * S,
        T0 + 90 * S,
        T0 + 120 * S,
        T0 + 150 * S,
        T0 + 180 * S,
    ]
    assert {(c, s) for _, c, s in evaluator.calls} == {("v2", "v1")}
    # Steps and canary pods as the daemon would have scaled them (4 replicas).
    assert [(e.step, e.canary_pods) for e in result.timeline if e.verdict] == [
        (1, 1),
        (1, 1),
        (2, 2),
        (2, 2),
        (3, 4),
        (3, 4),
    ]


def test_failures_past_the_limit_roll_back_at_that_interval() -> None:
    rollout = make_rollout(analysis={"failureLimit": 1})
    bad_from = T0 + 80 * S
    result, _ = run(rollout, lambda at: "fail" if at >= bad_from else "pass")
    assert analysed(result) == [
        (T0 + 30 * S, "pass"),
        (T0 + 60 * S, "pass"),
        (T0 + 90 * S, "fail"),
        (T0 + 120 * S, "fail"),
    ]
    assert result.outcome.decision == "rolledBack"
    assert result.outcome.at == T0 + 120 * S
    assert result.outcome.step == 2
    assert "(2 failed interval(s), failureLimit 1)" in result.outcome.reason
    assert [r for _, r in events(result)][-3:] == ["AnalysisFailed", "AnalysisFailed", "RolledBack"]


def test_inconclusive_intervals_past_the_limit_apply_the_policy() -> None:
    paused, _ = run(make_rollout(analysis={"inconclusiveLimit": 2}), lambda _: "inconclusive")
    assert [v for _, v in analysed(paused)] == ["inconclusive"] * 3
    assert paused.outcome.decision == "paused"
    assert paused.outcome.at == T0 + 90 * S
    assert "3 inconclusive intervals in a row (inconclusiveLimit 2)" in paused.outcome.reason

    rollout = make_rollout(analysis={"inconclusiveLimit": 0, "inconclusivePolicy": "rollback"})
    rolled, _ = run(rollout, lambda _: "inconclusive")
    assert (rolled.outcome.decision, rolled.outcome.at) == ("rolledBack", T0 + 30 * S)


def test_a_window_too_short_for_the_schedule_is_undecided() -> None:
    result, _ = run(make_rollout(), lambda _: "pass", minutes=1.5)
    assert result.outcome.decision == "undecided"
    assert result.outcome.at is None
    assert result.outcome.step == 2
    assert "with the release at step 2/3" in result.outcome.reason
    assert analysed(result)[-1][0] <= T0 + 90 * S


def test_warmup_delays_each_steps_first_analysis() -> None:
    result, _ = run(make_rollout(analysis={"warmup": "20s"}), lambda _: "pass")
    times = [at for at, _ in analysed(result)]
    assert times[0] == T0 + 50 * S  # Ready at T0, warm-up 20s, then a whole interval
    assert result.outcome.decision == "promoted"
    advanced = [at for at, reason in events(result) if reason == "StepAdvanced"]
    assert times[times.index(next(t for t in times if t > advanced[0]))] == advanced[0] + 50 * S


def test_one_entry_per_instant_unless_it_analysed() -> None:
    result, _ = run(make_rollout(), lambda _: "pass")
    instants = [(e.at, e.verdict is None) for e in result.timeline]
    assert len(instants) == len(set(instants))


def test_a_zero_hold_advances_on_the_first_passing_interval() -> None:
    rollout = make_rollout(steps=[{"canary": 1, "hold": "0s"}, {"canary": "100%", "hold": "0s"}])
    result, _ = run(rollout, lambda _: "pass")
    assert result.outcome.decision == "promoted"
    assert result.outcome.at == T0 + 60 * S


# ---------------------------------------------------------------- threshold evaluator


def relative_rollout() -> RolloutConfig:
    return make_rollout(
        analysis={
            "minRequests": 10,
            "checks": [
                {"name": "errors", "template": "error-rate", "max": "5%"},
                {
                    "name": "latency-vs-stable",
                    "template": "latency",
                    "relative": {"tolerance": "20%", "margin": 0.01},
                },
            ],
        }
    )


def state(canary: str = "v2", stable: str = "v1") -> RolloutState:
    return RolloutState(phase="progressing", canary_version=canary, stable_version=stable)


def answers(
    errors: float | Exception | None,
    latency: tuple[float | Exception | None, float | Exception | None],
) -> dict[str, float | Exception | None]:
    """Answers keyed by the exact queries the daemon renders for v2 against v1."""
    p = plan(relative_rollout(), "v2", "v1")
    assert p.stable_requests_query is not None
    errors_check, latency_check = p.checks
    assert latency_check.stable_query is not None
    return {
        p.canary_requests_query: 100.0,
        p.stable_requests_query: 300.0,
        errors_check.canary_query: errors,
        latency_check.canary_query: latency[0],
        latency_check.stable_query: latency[1],
    }


def test_daemon_evaluator_runs_the_daemons_queries_at_the_past_time() -> None:
    source = DictSource(answers(0.01, (0.3, 0.2)))
    evaluator = DaemonEvaluator(relative_rollout(), source)
    at = T0 + 10 * S
    verdict = evaluator.evaluate(state(), at)
    assert sorted(q for q, _ in source.asked) == sorted(source.answers)
    assert {when for _, when in source.asked} == {at}
    assert verdict.verdict == "fail"
    assert [(c.name, c.verdict) for c in verdict.checks] == [
        ("errors", "pass"),
        ("latency-vs-stable", "fail"),
    ]
    assert "0.3 exceeds stable 0.2 by more than allowed (0.25)" in verdict.reason
    assert evaluator.silences() == []


def test_daemon_evaluator_keeps_rejected_queries_inconclusive_and_reports_silence() -> None:
    bad = QueryError("bad PromQL")
    source = DictSource(answers(0.01, (bad, bad)))
    evaluator = DaemonEvaluator(relative_rollout(), source)
    verdict = evaluator.evaluate(state(), T0)
    assert verdict.verdict == "inconclusive"
    assert "canary query failed: bad PromQL" in verdict.reason
    silences = evaluator.silences()
    assert [s.what for s in silences] == [
        "check latency-vs-stable (canary)",
        "check latency-vs-stable (stable)",
    ]
    assert all(s.error == "bad PromQL" and "histogram_quantile" in s.query for s in silences)
    # One answer in a later interval is enough: the query is not silent any more.
    source.answers = answers(0.01, (0.2, 0.2))
    assert evaluator.evaluate(state(), T0 + 30 * S).verdict == "pass"
    assert evaluator.silences() == []


def test_an_unreachable_prometheus_stops_the_backtest() -> None:
    source = DictSource(answers(PrometheusUnavailable("connection refused"), (0.1, 0.1)))
    with pytest.raises(PrometheusUnavailable):
        DaemonEvaluator(relative_rollout(), source).evaluate(state(), T0)


def test_caching_source_asks_once_per_query_and_time() -> None:
    inner = DictSource({"good": 1.0, "bad": QueryError("no")})
    cached = CachingSource(inner)
    for _ in range(3):
        assert cached.query_value("good", T0) == 1.0
        assert cached.query_value("good", T0 + S) == 1.0
        with pytest.raises(QueryError):
            cached.query_value("bad", T0)
    assert cached.queries == len(inner.asked) == 3


@pytest.mark.parametrize(
    ("check", "stable", "expected"),
    [
        ({"max": 0.02}, None, (0.02, None)),
        ({"min": 1.0, "max": 5.0}, None, (5.0, 1.0)),
        ({"relative": {"tolerance": "20%", "margin": 0.5}}, 10.0, (12.5, None)),
        ({"max": 11.0, "relative": {"tolerance": "20%"}}, 10.0, (11.0, None)),
        (
            {"relative": {"tolerance": "10%", "direction": "lower-is-worse"}},
            100.0,
            (None, 90.0),
        ),
        ({"relative": {"tolerance": "10%"}}, None, (None, None)),
    ],
)
def test_bounds_are_what_the_value_had_to_respect(
    check: dict[str, object], stable: float | None, expected: tuple[float | None, float | None]
) -> None:
    config = CheckConfig.model_validate({"name": "c", "template": "request-rate", **check})
    assert bounds(config, stable) == pytest.approx(expected)


def test_caching_source_caches_vectors_too() -> None:
    inner = DictSource({"good": 2.0, "bad": QueryError("no")})
    cached = CachingSource(inner)
    for _ in range(2):
        assert cached.query_vector("good", T0) == [({}, 2.0)]
        with pytest.raises(QueryError):
            cached.query_vector("bad", T0)
    assert cached.queries == 2


def test_the_default_evaluator_is_what_the_daemon_runs() -> None:
    source = DictSource({})
    thresholds = make_rollout()
    sequential = make_rollout(analysis={"sequential": {}, "checks": []})
    assert isinstance(default_evaluator(thresholds, source), DaemonEvaluator)
    assert isinstance(default_evaluator(sequential, source), DaemonEvaluator)


def test_unreadable_counters_leave_the_sequential_interval_inconclusive() -> None:
    rollout = make_rollout(analysis={"sequential": {}, "checks": []})
    answers: dict[str, float | Exception | None] = {
        plan(rollout, "v2", "v1").canary_requests_query: 100.0,
        **dict.fromkeys(
            (judging.counter_queries(rollout, v, "v2", "v1").joined() for v in ("v2", "v1")),
            QueryError("rejected"),
        ),
    }
    verdict = DaemonEvaluator(rollout, DictSource(answers)).evaluate(state(), T0)
    assert verdict.verdict == "inconclusive"
    assert verdict.reason.endswith("sequential judge: counters unavailable: rejected")


def test_a_blue_green_release_is_replayed_through_its_preview_switch_and_window() -> None:
    rollout = RolloutConfig.model_validate(
        {
            "name": "web",
            "namespace": "shop",
            "stable": "web",
            "interval": "30s",
            "strategy": "blueGreen",
            "blueGreen": {
                "activeService": "web",
                "previewService": "web-preview",
                "previewHold": "1m",
                "window": "2m",
            },
            "analysis": {
                "minRequests": 10,
                "warmup": "0s",
                "checks": [{"name": "errors", "template": "error-rate", "max": "1%"}],
            },
        }
    )

    passing, _ = run(rollout, lambda _: "pass")
    failing_live, _ = run(rollout, lambda at: "fail" if at >= T0 + 90 * S else "pass")

    assert passing.outcome.decision == "promoted"
    assert events(passing) == [
        (T0, "ReleaseDetected"),
        (T0 + 60 * S, "Switched"),
        (T0 + 180 * S, "Promoting"),
        (T0 + 180 * S, "Promoted"),
    ]
    # Every interval judged the whole new version (4 pods), on the preview and then live.
    assert {(e.step, e.canary_pods) for e in passing.timeline if e.verdict} == {(1, 4), (2, 4)}
    assert failing_live.outcome.decision == "rolledBack"
    assert (T0 + 60 * S, "Switched") in events(failing_live)
    assert events(failing_live)[-1] == (T0 + 90 * S, "RolledBack")


def test_a_gateway_release_is_replayed_through_its_weights() -> None:
    rollout = RolloutConfig.model_validate(
        {
            "name": "web",
            "namespace": "shop",
            "stable": "web",
            "interval": "30s",
            "strategy": "gateway",
            "gateway": {
                "httpRoute": "web",
                "stableService": "web-stable",
                "canaryService": "web-canary",
            },
            "steps": [{"canary": "5%", "hold": "1m"}, {"canary": "100%", "hold": "1m"}],
            "analysis": {
                "minRequests": 10,
                "warmup": "0s",
                "checks": [{"name": "errors", "template": "error-rate", "max": "1%"}],
            },
        }
    )

    passing, _ = run(rollout, lambda _: "pass")
    failing, _ = run(rollout, lambda at: "fail" if at >= T0 + 30 * S else "pass")

    assert passing.outcome.decision == "promoted"
    assert [reason for _, reason in events(passing)] == [
        "ReleaseDetected",
        "StepAdvanced",
        "Promoting",
        "Promoted",
    ]
    # 5% of 4 stable pods with 20% headroom is one canary pod; 100% is all four.
    assert {(e.step, e.canary_pods) for e in passing.timeline if e.verdict} == {(1, 1), (2, 4)}
    assert failing.outcome.decision == "rolledBack"
    assert events(failing)[-1] == (T0 + 30 * S, "RolledBack")
