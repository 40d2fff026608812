"""How long one ``sequential.update`` takes in the daemon, by traffic per poll.

Usage: ``.venv/bin/python bench/judge_speed.py``. Prints the median CPU time of
an update (errors plus two latency thresholds, 80-point grids, JSON round trip
of the state excluded) and the size of the persisted state.
"""

from __future__ import annotations

import json
import math
import statistics
import time

import numpy as np

from autocanary.judge import CounterSnapshot, SequentialConfig, sequential

CONFIG = SequentialConfig(latency_thresholds=(0.2, 0.3))


def snapshot(total: np.ndarray) -> CounterSnapshot:
    """A one-series snapshot from cumulative (requests, errors, fast <= 0.2, fast <= 0.3)."""
    requests, errors, fast_p90, fast_p99 = (float(v) for v in total)
    return CounterSnapshot.single(
        requests, errors, {0.2: fast_p90, 0.3: fast_p99, math.inf: requests}
    )


def main() -> None:
    """Time updates at several request counts per poll."""
    rng = np.random.default_rng(1)
    print("| requests per poll | canary weight | median CPU per update | state JSON |")
    print("|---|---|---|---|")
    for per_poll in (150, 750, 3000, 12000):
        for weight in (0.1, 0.5):
            canary = np.zeros(4)
            stable = np.zeros(4)
            state = sequential.initial(CONFIG, snapshot(canary), snapshot(stable))
            times = []
            for _ in range(30):
                for total, share in ((canary, weight), (stable, 1 - weight)):
                    n = rng.poisson(per_poll * share)
                    total += [
                        n,
                        rng.binomial(n, 0.01),
                        n - rng.binomial(n, 0.083),
                        n - rng.binomial(n, 0.014),
                    ]
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
