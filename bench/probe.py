"""How fast the probe and the testpage go on one core each; prints numbers, asserts nothing.

The probe's load engine runs in this process, pinned to CPU 0; a testpage runs
as a subprocess pinned to CPU 1. For each trial rate the probe sends for a few
seconds and we record when each request actually left. A rate is *held* when
the requests left at >= 98% of it (late sends are caught up, so a saturated
probe shows as a lower achieved rate and a growing lag) and every answer was a
200. The search doubles the rate until one is not held, then bisects.

Then wrk (``-t1 -c32 -d10s``, pinned to CPU 0) loads the same testpage, for its
requests/s on one core: the ceiling the probe would have to reach before the
app became the bottleneck.

    .venv/bin/python bench/probe.py [--trial 4] [--start 250]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from autocanary.apps.probe import Load, ProbeMetrics, Target
from autocanary.apps.probe_http import Endpoint
from autocanary_testbed.http_checks import http_ready
from autocanary_testbed.procs import ProcessGroup, free_port

PROBE_CPU = 0
APP_CPU = 1
HOLD_FRACTION = 0.98


class RecordingMetrics(ProbeMetrics):
    """ProbeMetrics that also keeps every send lag and outcome in memory."""

    def __init__(self) -> None:
        super().__init__(CollectorRegistry())
        self.lags: list[float] = []
        self.sent_at: list[float] = []
        self.codes: dict[str, int] = {}

    def sent(self, target: str, lag_s: float) -> None:
        super().sent(target, lag_s)
        self.lags.append(lag_s)
        self.sent_at.append(time.monotonic())

    def finished(self, target: str, version: str, code: str, reason: str, seconds: float) -> None:
        super().finished(target, version, code, reason, seconds)
        key = code if not reason else f"{code}:{reason}"
        self.codes[key] = self.codes.get(key, 0) + 1


def trial(url: str, rate: float, seconds: float) -> dict[str, float | bool | str]:
    """Run the probe at ``rate`` for ``seconds``; the achieved rate, lag p99 and outcome."""
    metrics = RecordingMetrics()
    target = Target("bench", Endpoint.from_url(url), rate, 2.0)

    async def run() -> float:
        start = time.monotonic()
        await Load([target], metrics).run(seconds, asyncio.Event())
        return start

    start = asyncio.run(run())
    sent = len(metrics.sent_at)
    # Sends span [start, last send]; a probe that keeps up ends one interval before `seconds`.
    span = max(metrics.sent_at[-1] - start + 1.0 / rate, 1e-9)
    achieved = sent / span
    ok = metrics.codes.get("200", 0)
    return {
        "rate": rate,
        "achieved": achieved,
        "lag_p50_ms": float(np.percentile(metrics.lags, 50)) * 1000,
        "lag_p99_ms": float(np.percentile(metrics.lags, 99)) * 1000,
        "held": achieved >= HOLD_FRACTION * rate and ok == sent,
        "codes": ", ".join(f"{k}={v}" for k, v in sorted(metrics.codes.items())),
    }


def search(url: str, start: float, seconds: float) -> list[dict[str, float | bool | str]]:
    """Double from ``start`` until a rate is not held, then bisect to about 5%."""
    results = []
    low, high = 0.0, 0.0
    rate = start
    while True:
        result = trial(url, rate, seconds)
        results.append(result)
        print_trial(result)
        if not result["held"]:
            high = rate
            break
        low = rate
        rate *= 2
    while low and high / low > 1.05:
        rate = round((low + high) / 2)
        result = trial(url, rate, seconds)
        results.append(result)
        print_trial(result)
        if result["held"]:
            low = rate
        else:
            high = rate
    return results


def print_trial(result: dict[str, float | bool | str]) -> None:
    print(
        f"  rate {result['rate']:>7.0f}/s  achieved {result['achieved']:>8.1f}/s  "
        f"lag p50 {result['lag_p50_ms']:>7.2f} ms  p99 {result['lag_p99_ms']:>8.2f} ms  "
        f"{'held' if result['held'] else 'NOT held'}  [{result['codes']}]",
        flush=True,
    )


def wrk(url: str) -> float:
    """wrk -t1 -c32 -d10s on CPU 0 against ``url``; its Requests/sec."""
    out = subprocess.run(
        ["taskset", "-c", str(PROBE_CPU), "wrk", "-t1", "-c32", "-d10s", url],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{out}")
    return float(match.group(1))


def main() -> int:
    """Run the search and wrk, print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trial", type=float, default=4.0, help="seconds per trial rate")
    parser.add_argument("--start", type=float, default=250.0, help="first trial rate (req/s)")
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        print("needs two CPUs (probe on one, testpage on the other)", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {PROBE_CPU})
    with (
        tempfile.TemporaryDirectory(prefix="bench-probe-") as tmp,
        ProcessGroup(Path(tmp)) as group,
    ):
        port = free_port()
        app = group.start(
            "testpage",
            [
                "taskset", "-c", str(APP_CPU),
                sys.executable, "-m", "autocanary.apps.testpage",
                "--host", "127.0.0.1", "--port", str(port), "--drain-delay", "0s",
            ],
            env={"VERSION": "bench"},
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}/"
        app.wait_ready(http_ready(f"{url}healthz"), 30, "serving /healthz")
        print(f"probe on CPU {PROBE_CPU}, testpage on CPU {APP_CPU}, {args.trial:g}s per trial")
        results = search(url, args.start, args.trial)
        held = [r for r in results if r["held"]]
        best = max(held, key=lambda r: float(r["rate"])) if held else None
        requests_per_s = wrk(url)
    print()
    if best is None:
        print(f"probe: did not hold even {args.start:g}/s")
    else:
        print(
            f"probe: highest rate held within 2%: {best['rate']:.0f}/s "
            f"(achieved {best['achieved']:.1f}/s, scheduling lag p99 {best['lag_p99_ms']:.2f} ms)"
        )
    print(f"wrk -t1 -c32 -d10s on the same testpage: {requests_per_s:.0f} requests/s")
    print(f"load average after the run: {os.getloadavg()[0]:.2f} (other work skews these numbers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
