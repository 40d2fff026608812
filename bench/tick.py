"""How long one rollout tick takes, and how much memory the daemon's work needs, at scale.

Starts the local control plane and a Prometheus, creates N rollouts (a stable
Deployment of 3 KWOK pods and a canary each), then drives the daemon's own
``RolloutEngine.tick()`` for every rollout, as the scheduler would: idle ticks
(nothing to do), release ticks (detection and scaling), and analysing ticks
(every threshold query sent to Prometheus, which has no data for them, so each
interval is inconclusive). Prints tick latency percentiles per kind and the
process's peak RSS. Speed targets live here, never in tests.

    .venv/bin/python bench/tick.py [--rollouts 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kubernetes import client

from autocanary.adapters.kubernetes import KubeClient
from autocanary.adapters.notify import Notifier
from autocanary.adapters.prometheus import PrometheusClient
from autocanary.config.loader import parse_config
from autocanary.config.models import PrometheusConfig, RolloutConfig
from autocanary.daemon.engine import RolloutEngine
from autocanary.daemon.metrics import DaemonMetrics
from autocanary_testbed.controlplane import ControlPlane
from autocanary_testbed.monitoring import PrometheusServer
from autocanary_testbed.stack import app_deployment
from autocanary_testbed.waiting import wait_until

NAMESPACE = "bench"


def _config(prometheus_url: str, rollouts: int) -> list[RolloutConfig]:
    entries = "".join(
        f"""
  - name: app{i}
    namespace: {NAMESPACE}
    stable: app{i}
    interval: 1s
    steps: [{{canary: 1, hold: 1m}}, {{canary: 100%, hold: 1m}}]
    analysis:
      inconclusiveLimit: 1000
      checks:
        - {{name: error-rate, template: error-rate, max: 1%}}
        - {{name: latency-p99, template: latency, quantile: 0.99, max: 500ms}}
        - {{name: p90-vs-stable, template: latency, quantile: 0.9, relative: {{tolerance: 20%}}}}
"""
        for i in range(rollouts)
    )
    text = f"prometheus:\n  url: {prometheus_url}\nrollouts:{entries}"
    return parse_config(text, "bench").rollouts


def _percentiles(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    median = statistics.median(ms)
    return f"n={len(ms):4d}  p50 {median:7.1f} ms  p99 {p99:7.1f} ms  max {ms[-1]:7.1f} ms"


def main() -> None:
    """Run the benchmark and print its numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rollouts", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5, help="analysing ticks per rollout")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="autocanary-bench-tick-"))
    with ControlPlane() as cp, PrometheusServer(work / "prometheus") as prom:
        cp.create_namespace(NAMESPACE)
        api = cp.api_client()
        apps = client.AppsV1Api(api)
        for i in range(args.rollouts):
            for name, track, replicas in (
                (f"app{i}", "stable", 3),
                (f"app{i}-canary", "canary", 0),
            ):
                body: Any = app_deployment(name, f"app{i}", track, "v1", replicas=replicas)
                apps.create_namespaced_deployment(NAMESPACE, body)
        kube = KubeClient(cp.api_client())
        wait_until(
            lambda: all(
                kube.read_deployment(NAMESPACE, f"app{i}").ready == 3 for i in range(args.rollouts)
            ),
            timeout=300,
            what="every stable Ready",
        )
        rollouts = _config(prom.url, args.rollouts)
        prometheus = PrometheusClient(PrometheusConfig(url=prom.url))
        metrics = DaemonMetrics()
        clock = {"now": datetime.now(UTC)}
        with Notifier([], metrics=metrics) as notifier:
            engines = [
                RolloutEngine(
                    r,
                    kube=kube,
                    prometheus=prometheus,
                    notifier=notifier,
                    metrics=metrics,
                    clock=lambda: clock["now"],
                )
                for r in rollouts
            ]
            timings: dict[str, list[float]] = {"idle": [], "release": [], "analysing": []}

            def timed(kind: str, engine: RolloutEngine) -> None:
                started = time.perf_counter()
                engine.tick()
                timings[kind].append(time.perf_counter() - started)

            for _ in range(3):
                for engine in engines:
                    timed("idle", engine)
            for i, engine in enumerate(engines):
                apps.patch_namespaced_deployment(
                    f"app{i}-canary",
                    NAMESPACE,
                    {"spec": {"template": {"metadata": {"labels": {"version": "v2"}}}}},
                )
                timed("release", engine)
            wait_until(
                lambda: all(
                    kube.read_deployment(NAMESPACE, f"app{i}-canary").ready >= 1
                    for i in range(args.rollouts)
                ),
                timeout=300,
                what="every canary Ready",
            )
            for engine in engines:  # waitingReady -> analysing
                timed("release", engine)
            analyses = 0
            for _ in range(args.rounds):
                clock["now"] += timedelta(seconds=2)
                for engine in engines:
                    timed("analysing", engine)
            for engine in engines:
                _, _, _, state = engine.observe()
                analyses += len(state.verdicts)
        prometheus.close()
        api.close()  # type: ignore[no-untyped-call]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"rollouts: {args.rollouts}; analysing ticks query Prometheus 6 times "
        f"(3 checks, one relative, and request counts); analyses recorded: {analyses}"
    )
    for kind, samples in timings.items():
        print(f"{kind:10s} tick  {_percentiles(samples)}")
    print(f"peak RSS of this process (control-plane clients, engines, numpy): {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
