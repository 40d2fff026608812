"""How long one ``sequential.update`` takes in the daemon, by traffic per poll.

Usage: ``.venv/bin/python bench/judge_speed.py``. Prints the median CPU time of
an update (errors plus two latency bucket pairs, 80-point grids, JSON round
trip of the state excluded) and the size of the persisted state.
"""

from __future__ import annotations

import json
import math
import statistics
import time

import numpy as np

from autocanary.judge import CounterSnapshot, SequentialConfig, sequential

# 20% slowdown at the stable's 0.2 s and 0.3 s: pairs 0.2/0.25 s and 0.3/0.4 s
CONFIG = SequentialConfig(latency_thresholds=(0.2, 0.3))
BOUNDS = (0.2, 0.25, 0.3, 0.4)
SLOW = (0.083, 0.035, 0.014, 0.003)  # share of requests above each bound


def snapshot(total: np.ndarray) -> CounterSnapshot:
    """A one-series snapshot from cumulative (requests, errors, fast <= each of BOUNDS)."""
    requests, errors, *fast = (float(v) for v in total)
    buckets = {**dict(zip(BOUNDS, fast, strict=True)), math.inf: requests}
    return CounterSnapshot.single(requests, errors, buckets)


def main() -> None:
    """Time updates at several request counts per poll."""
    rng = np.random.default_rng(1)
    print("| requests per poll | canary weight | median CPU per update | state JSON |")
    print("|---|---|---|---|")
    for per_poll in (150, 750, 3000, 12000):
        for weight in (0.1, 0.5):
            canary = np.zeros(2 + len(BOUNDS))
            stable = np.zeros(2 + len(BOUNDS))
            state = sequential.initial(CONFIG, snapshot(canary), snapshot(stable))
            times = []
            for _ in range(30):
                for total, share in ((canary, weight), (stable, 1 - weight)):
                    n = rng.poisson(per_poll * share)
                    slow = np.minimum.accumulate([rng.binomial(n, s) for s in SLOW])
                    total += [n, rng.binomial(n, 0.01), *(n - slow)]
                started = time.process_time()  # CPU time: other load on the box does not count
                state, _ = sequential.update(CONFIG, state, snapshot(canary), snapshot(stable))
                times.append(time.process_time() - started)
            size = len(json.dumps(state.to_dict()))
            print(
                f"| {per_poll} | {weight:.0%} | {1000 * statistics.median(times):.1f} ms "
                f"| {size / 1024:.1f} KiB |"
            )


if __name__ == "__main__":
    main()
