"""The sequential judge's persisted evidence, and its JSON form.

Everything the judge knows between polls is here: the hypotheses fixed at
release start (psi0, psi1, the grid, the latency thresholds), per metric the
summed log-likelihood ratios, whether safety was ever proven, running totals,
and the last raw counters per series. A restarted daemon that reads this back
neither loses evidence nor counts a poll twice, because the next increase is
taken from the counters stored with the evidence they produced.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autocanary.errors import StateCorrupt
from autocanary.judge.counts import fields_for
from autocanary.judge.eprocess import Grid

STATE_VERSION = 1


@dataclass(frozen=True)
class MetricState:
    """Evidence about one metric (errors, or one latency threshold)."""

    name: str
    evidence: tuple[float, ...]  # Lambda(theta) on the grid, relative to psi0
    safe: bool = False  # safety proven at some poll; stays proven (Ville bounds "ever")
    mh: tuple[float, float] = (0.0, 0.0)  # Mantel-Haenszel numerator, denominator
    totals: tuple[int, int, int, int] = (0, 0, 0, 0)  # canary n, x; stable m, y


@dataclass(frozen=True)
class JudgeState:
    """The judge's state for one release; JSON-serialisable with ``to_dict``/``from_dict``."""

    psi0: float
    psi1: float
    grid_points: int
    grid_max: float
    prior_sd: float
    thresholds: tuple[float, ...]
    metrics: tuple[MetricState, ...]
    canary: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    stable: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    polls: int = 0

    def grid(self) -> Grid:
        """The grid the evidence vectors live on."""
        return Grid(self.psi0, self.psi1, self.grid_points, self.grid_max, self.prior_sd)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data; floats keep full precision (``repr`` round-trips)."""
        return {
            "version": STATE_VERSION,
            "psi0": self.psi0,
            "psi1": self.psi1,
            "gridPoints": self.grid_points,
            "gridMax": self.grid_max,
            "priorSd": self.prior_sd,
            "thresholds": list(self.thresholds),
            "polls": self.polls,
            "metrics": [
                {
                    "name": m.name,
                    "evidence": list(m.evidence),
                    "safe": m.safe,
                    "mh": list(m.mh),
                    "totals": list(m.totals),
                }
                for m in self.metrics
            ],
            "canary": {k: list(v) for k, v in self.canary.items()},
            "stable": {k: list(v) for k, v in self.stable.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JudgeState:
        """Read back ``to_dict`` output; anything malformed raises ``StateCorrupt``."""
        if not isinstance(data, Mapping) or data.get("version") != STATE_VERSION:
            version = data.get("version") if isinstance(data, Mapping) else None
            raise StateCorrupt(f"judge state version {version!r} is not {STATE_VERSION}")
        try:
            state = cls(
                psi0=float(data["psi0"]),
                psi1=float(data["psi1"]),
                grid_points=int(data["gridPoints"]),
                grid_max=float(data["gridMax"]),
                prior_sd=float(data["priorSd"]),
                thresholds=tuple(float(t) for t in data["thresholds"]),
                polls=int(data["polls"]),
                metrics=tuple(_metric(m) for m in data["metrics"]),
                canary=_counters(data["canary"]),
                stable=_counters(data["stable"]),
            )
            size = state.grid().size
        except (KeyError, TypeError, ValueError) as e:
            raise StateCorrupt(f"judge state is malformed: {e}") from e
        _check_shapes(state, size)
        return state


def _metric(data: Mapping[str, Any]) -> MetricState:
    mh = tuple(float(v) for v in data["mh"])
    totals = tuple(int(v) for v in data["totals"])
    if len(mh) != 2 or len(totals) != 4:
        raise ValueError("mh needs 2 numbers and totals 4")
    return MetricState(
        name=str(data["name"]),
        evidence=tuple(float(v) for v in data["evidence"]),
        safe=bool(data["safe"]),
        mh=(mh[0], mh[1]),
        totals=(totals[0], totals[1], totals[2], totals[3]),
    )


def _counters(data: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {str(k): tuple(int(v) for v in values) for k, values in data.items()}


def _check_shapes(state: JudgeState, size: int) -> None:
    fields = fields_for(state.thresholds)
    if len(state.metrics) != 1 + len(state.thresholds):
        raise StateCorrupt("judge state has a metric count that does not match its thresholds")
    for m in state.metrics:
        if len(m.evidence) != size or not all(math.isfinite(v) for v in m.evidence):
            raise StateCorrupt(f"judge state evidence for {m.name} is not {size} finite numbers")
    for version in (state.canary, state.stable):
        if any(len(v) != fields for v in version.values()):
            raise StateCorrupt(f"judge state counters are not {fields} numbers per series")
