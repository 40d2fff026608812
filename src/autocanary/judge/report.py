"""What the sequential judge tells its caller: the verdict, the evidence per metric, and why.

The reason is one line a human can act on, e.g. ``errors: canary error odds
3.1x stable (95% CS 1.9-5.2), harm e-value 412 >= 60``; the per-metric
evidence is what ``status`` shows and /metrics exports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from autocanary.judge.counts import PollCounts


class JudgeVerdict(StrEnum):
    """The judge's decision after a poll."""

    CONTINUE = "continue"  # neither harm nor safety proven yet (at the deadline: inconclusive)
    ROLLBACK = "rollback"  # harm proven for some metric, or the critical guard tripped
    PROMOTE = "promote"  # safety proven for every metric and no harm proven


@dataclass(frozen=True)
class MetricEvidence:
    """One metric's evidence after a poll.

    ``ratio`` is the Mantel-Haenszel odds ratio of canary vs stable, ``ci_low``
    and ``ci_high`` the confidence sequence of it (``0``/``inf`` when the grid's
    end is reached), ``psi0``/``psi1`` the hypotheses' boundaries actually tested.
    """

    name: str
    harm_evalue: float
    harm_threshold: float
    safety_evalue: float
    safety_threshold: float
    safe: bool  # safety proven at this or an earlier poll
    ratio: float
    ci_low: float
    ci_high: float
    psi0: float
    psi1: float
    canary_requests: int
    canary_events: int
    stable_requests: int
    stable_events: int

    @property
    def harmful(self) -> bool:
        """Harm proven: the harm e-value reached its threshold."""
        return self.harm_evalue >= self.harm_threshold


@dataclass(frozen=True)
class Judgement:
    """The verdict after one poll, with the evidence behind it."""

    verdict: JudgeVerdict
    reason: str
    metrics: tuple[MetricEvidence, ...]
    poll: PollCounts
    confidence: float  # simultaneous coverage of the reported confidence sequences, 1 - alpha
    critical: bool = False  # the non-statistical guard tripped
    skipped: tuple[str, ...] = ()  # series whose read was incomplete or inconsistent this poll


def number(value: float) -> str:
    """A ratio or e-value for people: 3 significant digits, no exponent below a million."""
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf"
    if value >= 1e6:
        return f"{value:.2e}"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _interval(m: MetricEvidence, confidence: float) -> str:
    return f"{confidence:.0%} simultaneous CS {number(m.ci_low)}-{number(m.ci_high)}"


def _what(m: MetricEvidence) -> str:
    if m.name == "errors":
        return "canary error odds"
    return f"canary odds of {m.name}"


def harm_reason(m: MetricEvidence, confidence: float) -> str:
    """Why harm is proven for one metric."""
    return (
        f"{m.name}: {_what(m)} {number(m.ratio)}x stable ({_interval(m, confidence)}), "
        f"harm e-value {number(m.harm_evalue)} >= {number(m.harm_threshold)} "
        f"(tolerated {number(m.psi0)}x)"
    )


def critical_reason(
    requests: int, errors: int, stable_requests: int, stable_errors: int, excess: float
) -> str:
    """Why the critical guard tripped."""
    stable = stable_errors / stable_requests if stable_requests else 0.0
    return (
        f"errors: critical guard, canary error share {errors / requests:.1%} "
        f"({errors} of {requests}) over the stable's {stable:.1%} by more than {excess:.0%}"
    )


def promote_reason(metrics: tuple[MetricEvidence, ...], confidence: float) -> str:
    """Why every metric is proven safe."""
    parts = ", ".join(
        f"{m.name} below {number(m.psi1)}x ({_interval(m, confidence)})" for m in metrics
    )
    return f"safety proven for every metric: {parts}"


def continue_reason(metrics: tuple[MetricEvidence, ...], confidence: float) -> str:
    """Where the evidence stands while neither decision is proven."""
    parts = "; ".join(
        f"{m.name} {number(m.ratio)}x ({_interval(m, confidence)}), "
        f"harm e {number(m.harm_evalue)}/{number(m.harm_threshold)}, "
        + ("safe" if m.safe else f"safety e {number(m.safety_evalue)}/{number(m.safety_threshold)}")
        for m in metrics
    )
    return f"undecided: {parts}"
