"""The sequential judge's persisted evidence, and its JSON form.

Everything the judge knows between polls is here: the settings fixed at
release start (alpha, beta, psi0, psi1, the grid, the latency bucket pairs,
the noise floor), per metric the summed log-likelihood ratios, the
change-point statistic, the noise estimate's running sums, whether safety was
ever proven, running totals, and the last accepted raw counters (and process
start times) of every series ever seen. A restarted daemon that reads this
back neither loses evidence nor counts a poll twice, because the next increase
is taken from the counters stored with the evidence they produced.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autocanary.errors import StateCorrupt
from autocanary.judge.counts import fields_for
from autocanary.judge.eprocess import Grid

STATE_VERSION = 2


@dataclass(frozen=True)
class MetricState:
    """Evidence about one metric (errors, or one latency threshold)."""

    name: str
    evidence: tuple[float, ...]  # Lambda(theta) on the grid, relative to psi0
    safe: bool = False  # safety proven at some poll; stays proven (Ville bounds "ever")
    mh: tuple[float, float] = (0.0, 0.0)  # Mantel-Haenszel numerator, denominator
    totals: tuple[int, int, int, int] = (0, 0, 0, 0)  # canary n, x; stable m, y
    # log R_j of the change-point mixture per harm alternative (empty: no mass yet)
    change: tuple[float, ...] = ()
    # running sums for the between-poll noise estimate: K, sum w, sum w^2, sum w*t, sum w*t^2
    noise: tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class JudgeState:
    """The judge's state for one release; JSON-serialisable with ``to_dict``/``from_dict``."""

    psi0: float
    psi1: float
    grid_points: int
    grid_max: float
    prior_sd: float
    thresholds: tuple[float, ...]  # every bucket boundary read, ascending
    metrics: tuple[MetricState, ...]
    alpha: float = 0.05
    beta: float = 0.05
    # per latency metric: (stable's boundary, canary's boundary), canary's >= (1+tolerance) x
    latency_pairs: tuple[tuple[float, float], ...] = ()
    noise_floor: float = 0.0  # least per-poll sd of the log odds ratio assumed
    canary: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    stable: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    canary_starts: Mapping[str, float] = field(default_factory=dict)
    stable_starts: Mapping[str, float] = field(default_factory=dict)
    polls: int = 0

    def grid(self) -> Grid:
        """The grid of the error metric (odds ratio tolerance psi0)."""
        return Grid(self.psi0, self.psi1, self.grid_points, self.grid_max, self.prior_sd)

    def latency_grid(self) -> Grid:
        """The grid of the latency metrics: their bucket pairs carry the tolerance, so psi0 = 1."""
        return Grid(1.0, self.psi1 / self.psi0, self.grid_points, self.grid_max, self.prior_sd)

    def grids(self) -> tuple[Grid, ...]:
        """One grid per metric: errors, then each latency pair."""
        return (self.grid(), *(self.latency_grid() for _ in self.latency_pairs))

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
            "alpha": self.alpha,
            "beta": self.beta,
            "latencyPairs": [list(p) for p in self.latency_pairs],
            "noiseFloor": self.noise_floor,
            "polls": self.polls,
            "metrics": [
                {
                    "name": m.name,
                    "evidence": list(m.evidence),
                    "safe": m.safe,
                    "mh": list(m.mh),
                    "totals": list(m.totals),
                    "change": list(m.change),
                    "noise": list(m.noise),
                }
                for m in self.metrics
            ],
            "canary": {k: list(v) for k, v in self.canary.items()},
            "stable": {k: list(v) for k, v in self.stable.items()},
            "canaryStarts": dict(self.canary_starts),
            "stableStarts": dict(self.stable_starts),
        }

    @staticmethod
    def outdated(data: Mapping[str, Any]) -> bool:
        """Whether ``data`` is evidence written by an older daemon, in a format before this one.

        Such evidence is not read back: the release's judge starts afresh. That
        keeps its guarantee, since an e-process may be restarted at any time
        chosen without looking at the data (an upgrade is such a time).
        """
        version = data.get("version") if isinstance(data, Mapping) else None
        return (
            isinstance(version, int) and not isinstance(version, bool) and version < STATE_VERSION
        )

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
                alpha=float(data["alpha"]),
                beta=float(data["beta"]),
                latency_pairs=tuple(_pair(p) for p in data["latencyPairs"]),
                noise_floor=float(data["noiseFloor"]),
                polls=int(data["polls"]),
                metrics=tuple(_metric(m) for m in data["metrics"]),
                canary=_counters(data["canary"]),
                stable=_counters(data["stable"]),
                canary_starts=_starts(data["canaryStarts"]),
                stable_starts=_starts(data["stableStarts"]),
            )
            size = state.grid().size
        except (KeyError, TypeError, ValueError) as e:
            raise StateCorrupt(f"judge state is malformed: {e}") from e
        _check_shapes(state, size)
        return state


def _pair(data: Any) -> tuple[float, float]:
    low, high = (float(v) for v in data)
    return low, high


def _metric(data: Mapping[str, Any]) -> MetricState:
    mh = tuple(float(v) for v in data["mh"])
    totals = tuple(int(v) for v in data["totals"])
    noise = tuple(float(v) for v in data["noise"])
    if len(mh) != 2 or len(totals) != 4 or len(noise) != 5:
        raise ValueError("mh needs 2 numbers, totals 4 and noise 5")
    return MetricState(
        name=str(data["name"]),
        evidence=tuple(float(v) for v in data["evidence"]),
        safe=bool(data["safe"]),
        mh=(mh[0], mh[1]),
        totals=(totals[0], totals[1], totals[2], totals[3]),
        change=tuple(float(v) for v in data["change"]),
        noise=(noise[0], noise[1], noise[2], noise[3], noise[4]),
    )


def _starts(data: Mapping[str, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in data.items()}


def _counters(data: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {str(k): tuple(int(v) for v in values) for k, values in data.items()}


def _check_shapes(state: JudgeState, size: int) -> None:
    fields = fields_for(state.thresholds)
    if len(state.metrics) != 1 + len(state.latency_pairs):
        raise StateCorrupt("judge state has a metric count that does not match its bucket pairs")
    if any(le not in state.thresholds for pair in state.latency_pairs for le in pair):
        raise StateCorrupt("judge state has a bucket pair outside its thresholds")
    for m in state.metrics:
        if len(m.evidence) != size or not all(math.isfinite(v) for v in m.evidence):
            raise StateCorrupt(f"judge state evidence for {m.name} is not {size} finite numbers")
        if m.change and len(m.change) != state.grid().points:
            raise StateCorrupt(f"judge state change-point statistic for {m.name} has a bad length")
    for version in (state.canary, state.stable):
        if any(len(v) != fields for v in version.values()):
            raise StateCorrupt(f"judge state counters are not {fields} numbers per series")
