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

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from autocanary.errors import StateCorrupt
from autocanary.judge.counts import fields_for
from autocanary.judge.eprocess import Grid

STATE_VERSION: Final = 2
#: Strict: a value of the wrong JSON type is an error, never coerced.
_STRICT = ConfigDict(strict=True, extra="forbid")


@dataclass(frozen=True)
class MetricState:
    """Evidence about one metric (errors, or one latency threshold)."""

    __pydantic_config__ = _STRICT

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
    """The judge's state for one release; stored as JSON with camelCase names.

    Validated (strictly) when the rollout state is read back, so the pure core
    only ever sees a typed, well-shaped state.
    """

    __pydantic_config__ = _STRICT

    psi0: float
    psi1: float
    grid_points: Annotated[int, Field(alias="gridPoints")]
    grid_max: Annotated[float, Field(alias="gridMax")]
    prior_sd: Annotated[float, Field(alias="priorSd")]
    thresholds: tuple[float, ...]  # every bucket boundary read, ascending
    metrics: tuple[MetricState, ...]
    alpha: float = 0.05
    beta: float = 0.05
    # per latency metric: (stable's boundary, canary's boundary), canary's >= (1+tolerance) x
    latency_pairs: Annotated[tuple[tuple[float, float], ...], Field(alias="latencyPairs")] = ()
    # least per-poll sd of the log odds ratio assumed
    noise_floor: Annotated[float, Field(alias="noiseFloor")] = 0.0
    canary: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    stable: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    canary_starts: Annotated[Mapping[str, float], Field(alias="canaryStarts")] = field(
        default_factory=dict
    )
    stable_starts: Annotated[Mapping[str, float], Field(alias="stableStarts")] = field(
        default_factory=dict
    )
    polls: int = 0
    #: The format's version: evidence of an older one is not read back (see :meth:`outdated`).
    version: Literal[2] = STATE_VERSION

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
        data: dict[str, Any] = _CODEC.dump_python(self, mode="json", by_alias=True)
        return data

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
        version = data.get("version") if isinstance(data, Mapping) else None
        if not isinstance(data, Mapping) or version != STATE_VERSION or isinstance(version, bool):
            raise StateCorrupt(f"judge state version {version!r} is not {STATE_VERSION}")
        try:
            state = _CODEC.validate_json(json.dumps(dict(data)))
        except ValidationError as e:
            raise StateCorrupt(f"judge state is malformed: {e}") from e
        try:
            return check_judge_state(state)
        except ValueError as e:
            raise StateCorrupt(str(e)) from e


_CODEC: TypeAdapter[JudgeState] = TypeAdapter(JudgeState)


def check_judge_state(state: JudgeState) -> JudgeState:
    """``state`` if its parts fit together (sizes, pairs, counters); ``ValueError`` if not.

    Types are pydantic's to check; this is what types cannot say.
    """
    _check_shapes(state, state.grid().size)
    return state


def _check_shapes(state: JudgeState, size: int) -> None:
    fields = fields_for(state.thresholds)
    if len(state.metrics) != 1 + len(state.latency_pairs):
        raise ValueError("judge state has a metric count that does not match its bucket pairs")
    if any(le not in state.thresholds for pair in state.latency_pairs for le in pair):
        raise ValueError("judge state has a bucket pair outside its thresholds")
    for m in state.metrics:
        if len(m.evidence) != size or not all(math.isfinite(v) for v in m.evidence):
            raise ValueError(f"judge state evidence for {m.name} is not {size} finite numbers")
        if m.change and len(m.change) != state.grid().points:
            raise ValueError(f"judge state change-point statistic for {m.name} has a bad length")
    for version in (state.canary, state.stable):
        if any(len(v) != fields for v in version.values()):
            raise ValueError(f"judge state counters are not {fields} numbers per series")
