"""Detection benchmark: our sequential judge against fixed-threshold and Mann-Whitney judges.

Usage (from the repository root, with the test extra installed)::

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/detection.py          # full, 2,000 runs a cell
    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/detection.py --quick  # 200 runs, a smoke run

(one BLAS thread per process: the worker processes are the parallelism)

Every cell (release scenario x traffic rate x canary weight schedule) simulates
``--runs`` releases (see ``detection_sim``) and runs all judges on the same
counters (see ``detection_judges``). Per cell and judge it prints the shares
rolled back / promoted / undecided after 60 minutes, the error rate (false
rollbacks for good releases, missed regressions for bad ones) with a 95% Wilson
interval, median and p90 time to a decision, the mean number of bad requests
the release served (errors or slower than the stable's p99 bucket, above what
the stable would have served; a promoted bad release serves all traffic until
minute 60), and for our judge the median time over Wald's SPRT expected time.
The table is also written to ``bench/results/detection.md``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autocanary.judge import counts
from autocanary.judge.sequential import SequentialConfig
from detection_judges import PROMOTE, ROLLBACK, UNDECIDED, Outcome
from detection_sim import HORIZON_MIN, SCENARIOS, WEIGHTS, Traffic

RATES = (10, 50, 200)
JUDGES = ("sequential", "flagger", "flagger-98", "argo", "kayenta")
CONFIG = SequentialConfig(latency_quantiles=(0.9, 0.99))
RESULTS = Path(__file__).parent / "results" / "detection.md"


@dataclass(frozen=True)
class Cell:
    """One benchmark cell and the settings its worker needs."""

    scenario: str
    rate: int
    weight: str
    runs: int
    poll_s: int
    warmup_s: int
    seed: int
    min_hold_s: int = 0

    @property
    def label(self) -> str:
        """The scenario, with the operational settings that differ from the defaults."""
        extra = [f"warm-up {self.warmup_s // 60}m"] if self.warmup_s else []
        extra += [f"min hold {self.min_hold_s // 60}m"] if self.min_hold_s else []
        return f"{self.scenario}, {', '.join(extra)}" if extra else self.scenario


@dataclass(frozen=True)
class Row:
    """One judge's summary in one cell."""

    cell: Cell
    judge: str
    bad: bool
    rolled_back: float
    promoted: float
    undecided: float
    error: float
    error_low: float
    error_high: float
    median: float
    p90: float
    bad_requests: float
    sprt: float | None


def wilson(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion."""
    if trials == 0:
        return math.nan, math.nan
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = (
        z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    )
    return max(0.0, centre - half), min(1.0, centre + half)


def bad_requests(traffic: Traffic, outcome: Outcome) -> float:
    """Mean excess bad requests served per run until the decision (see the module doc)."""
    ticks = traffic.excess.shape[1]
    per_minute = 60 // traffic.poll_s
    decided_at = np.where(
        np.isnan(outcome.minutes), ticks, np.round(outcome.minutes * per_minute)
    ).astype(int)
    cum = np.concatenate([np.zeros((len(decided_at), 1)), np.cumsum(traffic.excess, axis=1)], 1)
    served = cum[np.arange(len(decided_at)), np.minimum(decided_at, ticks)]
    after = np.where(
        outcome.verdict == PROMOTE,
        traffic.excess_rate_full * (HORIZON_MIN - np.nan_to_num(outcome.minutes)) * 60,
        0.0,
    )
    return float(np.mean(served + after))


def summarise(
    cell: Cell, judge: str, outcome: Outcome, traffic: Traffic, sprt: float | None
) -> Row:
    """Shares, error rate with its interval, times and bad requests for one judge."""
    bad = SCENARIOS[cell.scenario].bad
    runs = len(outcome.verdict)
    rolled = int(np.sum(outcome.verdict == ROLLBACK))
    promoted = int(np.sum(outcome.verdict == PROMOTE))
    wrong = promoted if bad else rolled
    low, high = wilson(wrong, runs)
    decided = outcome.minutes[outcome.verdict != UNDECIDED]
    median = float(np.median(decided)) if decided.size else math.nan
    p90 = float(np.quantile(decided, 0.9)) if decided.size else math.nan
    return Row(
        cell,
        judge,
        bad,
        rolled / runs,
        promoted / runs,
        1 - (rolled + promoted) / runs,
        wrong / runs,
        low,
        high,
        median,
        p90,
        bad_requests(traffic, outcome),
        sprt if judge == "sequential" else None,
    )


def run_cell(cell: Cell) -> list[Row]:
    """Simulate one cell and judge it four ways."""
    import detection_judges as judges
    import detection_limits as limits
    import detection_sim as sim

    pairs = counts.pick_pairs(
        sim.stable_histogram(), CONFIG.latency_tolerance, quantiles=CONFIG.latency_quantiles
    )
    scenario = SCENARIOS[cell.scenario]
    weight = WEIGHTS[cell.weight]
    traffic = sim.simulate(scenario, cell.rate, weight, pairs, cell.runs, cell.poll_s, cell.seed)
    grid = CONFIG.grid()
    sprt = limits.sprt_minutes(
        scenario,
        cell.rate,
        weight,
        pairs,
        grid.psi0,
        grid.psi1_effective,
        CONFIG.alpha,
        CONFIG.beta,
    )
    skip = math.ceil(cell.warmup_s / 60)
    outcomes = {
        "sequential": judges.run_sequential(traffic, CONFIG, cell.warmup_s, cell.min_hold_s),
        "flagger": judges.run_flagger(traffic, skip_minutes=skip),
        "flagger-98": judges.run_flagger(traffic, min_success=0.98, skip_minutes=skip),
        "argo": judges.run_argo(traffic, skip_minutes=skip),
        "kayenta": judges.run_kayenta(traffic, skip_minutes=skip),
    }
    return [summarise(cell, name, outcomes[name], traffic, sprt) for name in JUDGES]


def _pct(value: float) -> str:
    return "—" if math.isnan(value) else f"{100 * value:.1f}%"


def _minutes(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}"


def format_rows(rows: Sequence[Row]) -> list[str]:
    """Markdown table lines for rows of one weight schedule."""
    lines = [
        "| scenario | truth | req/s | judge | rolled back | promoted | undecided "
        "| error [95% CI] | median min | p90 min | bad requests | median/SPRT |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        kind = "missed" if r.bad else "false rb"
        ratio = "—"
        if r.sprt is not None and not math.isnan(r.median) and r.sprt > 0:
            ratio = f"{r.median / r.sprt:.2f} ({r.sprt:.2f} min)"
        lines.append(
            f"| {r.cell.label} | {'bad' if r.bad else 'good'} | {r.cell.rate} | {r.judge} "
            f"| {_pct(r.rolled_back)} | {_pct(r.promoted)} | {_pct(r.undecided)} "
            f"| {kind} {_pct(r.error)} [{_pct(r.error_low)}-{_pct(r.error_high)}] "
            f"| {_minutes(r.median)} | {_minutes(r.p90)} | {r.bad_requests:.0f} | {ratio} |"
        )
    return lines


def targets(rows: Sequence[Row], poll_s: int) -> list[str]:
    """The issue's targets, checked on our judge's rows with default settings."""
    ours = [r for r in rows if r.judge == "sequential" and r.cell.label == r.cell.scenario]
    alpha = CONFIG.alpha
    lines = ["## Targets (sequential judge)", ""]
    null_rows = [r for r in ours if r.cell.scenario in ("A/A", "benign psi=1.1")]
    worst = max(null_rows, key=lambda r: r.error_high, default=None)
    if worst is not None:
        ok = all(r.error <= alpha for r in null_rows)
        lines.append(
            f"- False rollbacks <= {alpha:.0%} on A/A and benign at every rate and schedule: "
            f"{'met' if ok else 'NOT met'}; highest {_pct(worst.error)} "
            f"(95% CI up to {_pct(worst.error_high)}) in {worst.cell.scenario} at "
            f"{worst.cell.rate} req/s, weight {worst.cell.weight}"
        )
    for r in ours:
        if (r.cell.scenario, r.cell.rate, r.cell.weight) == ("errors 1->5%", 50, "10%"):
            lines.append(
                f"- 1%->5% at 50 req/s, 10% weight, rolled back within 1 minute: "
                f"{'met' if r.median <= 1.0 else 'NOT met'} (median {_minutes(r.median)} min, "
                f"p90 {_minutes(r.p90)} min, rolled back {_pct(r.rolled_back)})"
            )
    floor = 2 * poll_s / 60  # below two polls the poll interval, not the test, sets the pace
    ratios = [
        (r, r.median / r.sprt)
        for r in ours
        if r.sprt and r.cell.rate in (50, 200) and not math.isnan(r.median)
    ]
    testable = [(r, q) for r, q in ratios if r.sprt is not None and r.sprt >= floor]
    limited = [(r, q) for r, q in ratios if r.sprt is not None and r.sprt < floor]
    if testable:
        beyond = [
            f"{r.cell.scenario} @{r.cell.rate} {r.cell.weight}: {q:.2f}x"
            for r, q in testable
            if q > 2
        ]
        lines.append(
            f"- Median within 2x of the SPRT limit at 50 and 200 req/s: "
            f"{len(testable) - len(beyond)} of {len(testable)} stationary cells whose limit is "
            f"at least two polls ({floor:g} min)"
            + (f"; beyond: {'; '.join(beyond)}" if beyond else "")
        )
    if limited:
        first = sum(1 for r, _ in limited if r.median <= poll_s / 60)
        lines.append(
            f"- Poll-limited cells (SPRT limit under {floor:g} min): {len(limited)}; in {first} "
            f"of them the median decision is the first poll ({poll_s} s)"
        )
    return [*lines, ""]


LEGEND = """\
Judges: **sequential** = autocanary's judge (this repository's code, batched), errors plus the
stable's p90/p99 latency buckets, polled every {poll} s; **flagger** = success >= 99% and
p99 <= 500 ms per 1-minute check, rollback at 5 failed checks, promotion after 10 passed checks
(a failed check does not advance, as in Flagger's scheduler); **flagger-98** = the same at >= 98%;
**argo** = a measurement per minute over a 5-minute window, same conditions, failureLimit 3,
count 10; **kayenta** = Mann-Whitney (98%) on per-minute error rate and p99 of canary vs stable,
judged every 10 minutes on all data, score < 75 rolls back, the last interval (30 min) needs 95.
"error" is the false-rollback rate for good releases and the missed-regression (promoted) rate for
bad ones, with a 95% Wilson interval; times are over decided runs; "bad requests" are the mean
excess canary errors and requests slower than the stable's p99 bucket the release served, a
promoted bad release serving all traffic until minute {horizon}; "median/SPRT" is our median
time over Wald's SPRT expected time for alpha = beta = {alpha} (in brackets), for stationary
scenarios. Simulation: Poisson traffic with per-minute shared noise (traffic sd 0.2, error log-odds
sd 0.3, log latency sd 0.05), base error rate 1%, lognormal latency (median 100 ms, sigma 0.5) in
the project's histogram buckets.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print (and save) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="runs per cell (default 2000)")
    parser.add_argument("--quick", action="store_true", help="200 runs per cell, no file saved")
    parser.add_argument("--poll", type=int, default=15, help="sequential poll interval, seconds")
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--rates", type=int, nargs="*", default=list(RATES))
    parser.add_argument("--weights", nargs="*", default=list(WEIGHTS), choices=list(WEIGHTS))
    parser.add_argument("--scenarios", nargs="*", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to save the table")
    args = parser.parse_args(argv)
    if 60 % args.poll:
        parser.error("--poll must divide 60")
    runs = min(args.runs, 200) if args.quick else args.runs
    plan = [(s, rate, w, 0, 0) for w in args.weights for s in args.scenarios for rate in args.rates]
    # the daemon's operational settings where they matter: a warm-up for cold starts (all
    # judges skip it) and a minimum hold against late onsets (only ours promotes early)
    settings = {"canary cold start": (120, 0), "late onset (5% at 10m)": (0, 15 * 60)}
    plan += [
        (s, rate, "10%", *settings[s])
        for s in args.scenarios
        if s in settings
        for rate in args.rates
    ]
    cells = [
        Cell(s, rate, w, runs, args.poll, warmup, args.seed + i, min_hold)
        for i, (s, rate, w, warmup, min_hold) in enumerate(plan)
    ]
    started = time.monotonic()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        results = list(pool.map(run_cell, cells))
    rows = [row for cell_rows in results for row in cell_rows]
    elapsed = time.monotonic() - started
    plain = [r for r in rows if r.cell.label == r.cell.scenario]
    tuned = [r for r in rows if r.cell.label != r.cell.scenario]
    header = [
        "# Detection benchmark",
        "",
        f"`bench/detection.py`, {runs} runs per cell, horizon {HORIZON_MIN} min, "
        f"alpha = beta = {CONFIG.alpha}, psi0 = {CONFIG.psi0:g}, psi1 = {CONFIG.safe_ratio:g}; "
        f"{elapsed / 60:.1f} min on {args.workers} workers.",
        "",
        LEGEND.format(poll=args.poll, horizon=HORIZON_MIN, alpha=CONFIG.alpha),
        *targets(rows, args.poll),
    ]
    body = []
    for w in args.weights:
        section = [r for r in plain if r.cell.weight == w]
        body += [f"## Canary weight: {w}", "", *format_rows(section), ""]
    if tuned:
        title = "## Operational settings (weight 10%): warm-up for cold starts, minimum hold"
        body += [title, "", *format_rows(tuned), ""]
    text = "\n".join(header + body)
    print(text)
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        print(f"saved to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
