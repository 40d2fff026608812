"""What an interval's analysis concludes: a verdict, and one check's outcome as alerts show it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Verdict = Literal["pass", "fail", "inconclusive"]


@dataclass(frozen=True)
class CheckSummary:
    """One check's outcome in the interval that triggered the alert."""

    name: str
    verdict: Verdict
    value: float | None
    threshold: str
    stable_value: float | None = None
    reason: str = ""
