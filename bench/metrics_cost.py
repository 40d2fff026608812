"""What the daemon's /metrics costs with N rollouts: bytes, series, memory and CPU per scrape.

No cluster and no daemon process: the daemon's own :class:`DaemonMetrics` is
filled as N idle rollouts leave it (a phase, a step, a canary weight, a few
ticks timed, no tick running), then rendered as /metrics renders it
(``generate_latest``). Prints, per N, the scrape's size and lines, the
memory the metrics take (tracemalloc, Python allocations only) and the CPU
seconds of one render (the best of a few: a lower bound on a loaded machine).

    nice -n 10 .venv/bin/python bench/metrics_cost.py [--rollouts 1000 10000]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

from prometheus_client import generate_latest

from autocanary.daemon.metrics import DaemonMetrics


def _filled(rollouts: int) -> DaemonMetrics:
    metrics = DaemonMetrics()
    for i in range(rollouts):
        name, namespace = f"app{i}", f"scale{i // 1000}"
        metrics.set_phase(name, namespace, "idle")
        metrics.step.labels(name).set(0)
        metrics.canary_weight.labels(name, namespace).set(0)
        metrics.tick_running.labels(name).set(0)
        for elapsed in (0.001, 0.002, 0.004):
            metrics.observe_tick(name, elapsed)
    return metrics


def measure(rollouts: int, renders: int) -> dict[str, float]:
    """Size, lines, memory and render CPU of /metrics for ``rollouts`` idle rollouts.

    Also prints how many samples each metric family exports per rollout.
    """
    tracemalloc.start()
    metrics = _filled(rollouts)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    best = float("inf")
    body = b""
    for _ in range(renders):
        started = time.process_time()
        body = generate_latest(metrics.registry)
        best = min(best, time.process_time() - started)
    lines = [line for line in body.splitlines() if line and not line.startswith(b"#")]
    families = {f.name: len(f.samples) / rollouts for f in metrics.registry.collect()}
    print(
        f"{rollouts:,} rollouts, samples per rollout by family: "
        + ", ".join(f"{k} {v:.1f}" for k, v in sorted(families.items(), key=lambda kv: -kv[1]))
    )
    return {
        "rollouts": rollouts,
        "scrape_mib": len(body) / 2**20,
        "samples": len(lines),
        "samples_per_rollout": len(lines) / rollouts,
        "metrics_mib": held / 2**20,
        "render_cpu_s": best,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rollouts", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--renders", type=int, default=3)
    args = parser.parse_args()
    print(
        "| rollouts | scrape | samples (per rollout) | metrics memory | render CPU |\n"
        "|---|---|---|---|---|"
    )
    for n in args.rollouts:
        m = measure(n, args.renders)
        print(
            f"| {n:,} | {m['scrape_mib']:.1f} MiB | {m['samples']:,.0f} "
            f"({m['samples_per_rollout']:.0f}) | {m['metrics_mib']:.0f} MiB "
            f"| {m['render_cpu_s']:.2f} s |"
        )


if __name__ == "__main__":
    main()
