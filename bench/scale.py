"""What the daemon costs with N rollouts: the real ``autocanary run`` against the test bed.

Starts the local control plane (real API server, KWOK pods) and a Prometheus,
creates N rollouts (a stable Deployment of one KWOK pod and an empty canary
each, a thousand per namespace), starts the daemon as a subprocess on a config
naming all of them (interval 30s, no leader election) and measures it from
outside. With ``--declare`` the rollouts are declared on their stable
Deployments instead (label and an empty annotation), the config holding only
the namespaces searched and the same rollout settings as discovery's
defaults: as a fleet of ten thousand would run (their names alone would be
more than the 1 MiB a ConfigMap, the daemon's config in a cluster, holds).
Measured:

- start-up: seconds until every rollout has ticked once, and how many canary
  generations the start-up bumped (writes to the canaries);
- idle: CPU seconds per minute (from /proc), peak RSS, threads, requests per
  second to the API server (the daemon's own count, ``autocanary_kube_requests``)
  and tick lag p50/p99 (``autocanary_tick_lag_seconds``: start minus due time);
- one scrape of the daemon's /metrics: its CPU seconds (not in the windows above);
- a wave: the canary templates of 10% of the rollouts changed at once; the
  detection delay is from each patch's answer to the daemon's first write for
  it (the canary's state, phase progressing) and to its ReleaseDetected Event,
  each as it reaches a watch (p50/p99); CPU and requests during the wave.

Percentiles from the daemon's histograms are bucket upper bounds. Prints a
Markdown table row and appends it, with the run's details, to
bench/results/scale.md. Run it niced, through the machine's heavy-run slot:

    nice -n 10 /work/wt/heavy .venv/bin/python bench/scale.py --rollouts 1000
    nice -n 10 /work/wt/heavy .venv/bin/python bench/scale.py --declare --rollouts 10000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from kubernetes import client, watch

from autocanary.config.models import ROLLOUT_ANNOTATION, ROLLOUT_LABEL
from autocanary.rollout.state import STATE_KEY, STATE_OBJECT_SUFFIX
from autocanary_testbed.apps import daemon_command
from autocanary_testbed.controlplane import ControlPlane
from autocanary_testbed.monitoring import PrometheusServer
from autocanary_testbed.procs import free_port
from autocanary_testbed.stack import app_deployment

PER_NAMESPACE = 1000
INTERVAL_S = 30
RESULTS = Path(__file__).parent / "results" / "scale.md"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _namespace(i: int) -> str:
    return f"scale{i // PER_NAMESPACE}"


#: Every rollout's settings but its names (a declared one's defaults).
SETTINGS: dict[str, Any] = {
    "interval": f"{INTERVAL_S}s",
    "steps": [{"canary": 1, "hold": "10m"}],
    "analysis": {
        "inconclusiveLimit": 1000,
        "checks": [{"name": "error-rate", "template": "error-rate", "max": "1%"}],
    },
}


def _config(
    prometheus_url: str, rollouts: int, port: int, declare: bool, workers: int | None
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "prometheus": {"url": prometheus_url},
        "daemon": {
            "listen": f"127.0.0.1:{port}",
            "logFormat": "json",
            "leaderElection": {"enabled": False},
        },
    }
    if workers is not None:
        config["daemon"]["workers"] = workers
    if declare:
        namespaces = sorted({_namespace(i) for i in range(rollouts)})
        config["discovery"] = {"enabled": True, "namespaces": namespaces, "defaults": SETTINGS}
    else:
        config["rollouts"] = [
            {"name": f"app{i}", "namespace": _namespace(i), "stable": f"app{i}", **SETTINGS}
            for i in range(rollouts)
        ]
    return config


# ---- the daemon process, seen from outside --------------------------------------------------


def _proc(pid: int) -> dict[str, float]:
    """CPU seconds (user + system), RSS and peak RSS in MiB, and threads of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {
        "cpu": cpu,
        "rss": int(status["VmRSS"].split()[0]) / 1024,
        "hwm": int(status["VmHWM"].split()[0]) / 1024,
        "threads": int(status["Threads"]),
    }


_SAMPLE = re.compile(r"^([a-zA-Z_:]+)(\{[^}]*\})? (\S+)$")


def _metrics(port: int) -> dict[str, float]:
    """The daemon's /metrics, summed over every label but ``le``, ``call``."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=60, trust_env=False).text
    sums: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        name, labels, value = m.groups()
        keep = re.findall(r'(le|call)="([^"]*)"', labels or "")
        key = name + "".join(f"|{k}={v}" for k, v in keep)
        sums[key] = sums.get(key, 0.0) + float(value)
    return sums


def _delta(after: dict[str, float], before: dict[str, float], prefix: str) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after if k.startswith(prefix) and after[k]}


def _quantile_from_buckets(buckets: dict[str, float], q: float) -> str:
    """The upper bound of the bucket holding the q-quantile, from cumulative bucket counts."""
    bounds = sorted(
        ((float(k.rsplit("le=", 1)[1]), v) for k, v in buckets.items() if "|le=" in k),
        key=lambda b: b[0],
    )
    total = bounds[-1][1] if bounds else 0
    if not total:
        return "n/a"
    for bound, count in bounds:
        if count >= q * total:
            return "≤ " + (f"{bound * 1000:g} ms" if bound < 1 else f"{bound:g} s")
    return "n/a"


def _requests(delta: dict[str, float]) -> tuple[float, dict[str, float]]:
    calls = {k.split("|call=", 1)[1]: v for k, v in delta.items() if "|call=" in k}
    return sum(calls.values()), calls


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ---- the run --------------------------------------------------------------------------------


def _create(cp: ControlPlane, rollouts: int, declare: bool) -> None:
    for n in sorted({_namespace(i) for i in range(rollouts)}):
        cp.create_namespace(n)
    local = threading.local()

    def apps() -> Any:
        if not hasattr(local, "apps"):
            local.apps = client.AppsV1Api(cp.api_client())
        return local.apps

    def one(i: int) -> None:
        for name, track, replicas in ((f"app{i}", "stable", 1), (f"app{i}-canary", "canary", 0)):
            body = app_deployment(name, f"app{i}", track, "v1", replicas=replicas)
            if declare and track == "stable":
                body["metadata"]["labels"][ROLLOUT_LABEL] = "true"
                body["metadata"]["annotations"] = {ROLLOUT_ANNOTATION: ""}
            apps().create_namespaced_deployment(_namespace(i), body, _request_timeout=60)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(rollouts)))


def _listed(api: client.ApiClient, namespace: str) -> Iterator[dict[str, Any]]:
    apps = client.AppsV1Api(api)
    token = None
    while True:
        listed: Any = apps.list_namespaced_deployment(
            namespace, limit=500, _continue=token, _preload_content=False
        )
        page = json.loads(listed.data)
        yield from page["items"]
        token = page["metadata"].get("continue")
        if not token:
            return


def _all_ready(api: client.ApiClient, rollouts: int) -> bool:
    ready = 0
    for n in sorted({_namespace(i) for i in range(rollouts)}):
        for d in _listed(api, n):
            if d["metadata"]["name"].endswith("-canary"):
                continue
            ready += (d.get("status") or {}).get("readyReplicas", 0) >= 1
    return ready >= rollouts


def _canary_generations(api: client.ApiClient, rollouts: int) -> int:
    return sum(
        d["metadata"]["generation"]
        for n in sorted({_namespace(i) for i in range(rollouts)})
        for d in _listed(api, n)
        if d["metadata"]["name"].endswith("-canary")
    )


def _watch_events(
    api: client.ApiClient,
    namespaces: list[str],
    seen: dict[str, float],
    written: dict[str, float],
    stop: threading.Event,
) -> list[threading.Thread]:
    """Record when each canary's ReleaseDetected Event, and its first state write of the
    release (phase progressing), reach a watch."""

    def events(namespace: str) -> None:
        core = client.CoreV1Api(api)
        while not stop.is_set():
            w: Any = watch.Watch(return_type=object)  # type: ignore[no-untyped-call]
            for event in w.stream(core.list_namespaced_event, namespace, timeout_seconds=30):
                obj = event["raw_object"]
                if obj.get("reason") == "ReleaseDetected":
                    seen.setdefault(obj["involvedObject"]["name"], time.monotonic())
                if stop.is_set():
                    break

    def states(namespace: str) -> None:
        # Each rollout's state lives in ConfigMap <canary>.autocanary-state.
        core = client.CoreV1Api(api)
        while not stop.is_set():
            w: Any = watch.Watch(return_type=object)  # type: ignore[no-untyped-call]
            for event in w.stream(core.list_namespaced_config_map, namespace, timeout_seconds=30):
                obj = event["raw_object"]
                name = str((obj.get("metadata") or {}).get("name", ""))
                state = (obj.get("data") or {}).get(STATE_KEY) or "{}"
                if name.endswith(STATE_OBJECT_SUFFIX) and json.loads(state).get("phase") == (
                    "progressing"
                ):
                    written.setdefault(name.removesuffix(STATE_OBJECT_SUFFIX), time.monotonic())
                if stop.is_set():
                    break

    threads = [
        threading.Thread(target=follow, args=(n,), daemon=True)
        for n in namespaces
        for follow in (events, states)
    ]
    for t in threads:
        t.start()
    return threads


def _wait(what: str, check: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``check()`` holds, asked every 2 s (a list of N objects is not free)."""
    began = time.monotonic()
    while not check():
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"{what}: not within {timeout:g}s")
        time.sleep(2.0)
    return time.monotonic() - began


def run(
    rollouts: int, idle_s: float, wave_share: float, declare: bool, workers: int | None = None
) -> dict[str, Any]:
    """Run the benchmark for ``rollouts`` (``daemon.workers``: the default unless given)."""
    work = Path(tempfile.mkdtemp(prefix="autocanary-bench-scale-"))
    result: dict[str, Any] = {"rollouts": rollouts, "declared": declare, "workers": workers}
    namespaces = sorted({_namespace(i) for i in range(rollouts)})
    # The controllers' default client limits (20 requests/s) would take most of an hour
    # to create 10,000 ReplicaSets and pods; the daemon is what is measured here.
    limits = ["--kube-api-qps=300", "--kube-api-burst=600"]
    # KWOK plays 4 pod stages at once by default: about 6 pods Ready a second here, so
    # 10,000 stables took most of an hour. Its --config list takes one more file; a
    # KwokConfiguration read from a file is not defaulted, so it states every option
    # the flags do not set (KWOK's defaults but for the pod stages' parallelism).
    kwok = work / "kwok-parallelism.yaml"
    kwok.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
                "kind": "KwokConfiguration",
                "options": {
                    "podPlayStageParallelism": 32,
                    "nodePlayStageParallelism": 4,
                    "nodeLeaseParallelism": 4,
                    "podsOnNodeSyncParallelism": 1,
                    "enableDebuggingHandlers": True,
                    "enableProfilingHandler": True,
                    "enableContentionProfiling": False,
                    "enablePodsOnNodeSyncListPager": True,
                    "enablePodsOnNodeSyncStreamWatch": False,
                },
            }
        )
    )
    bed = ControlPlane(
        extra_args={
            "kube-controller-manager": limits,
            "kube-scheduler": limits,
            "kwok": [f"--config={kwok}"],
        }
    )
    with bed as cp, PrometheusServer(work / "prometheus") as prom:
        api = cp.api_client()
        began = time.monotonic()
        _create(cp, rollouts, declare)
        result["create_s"] = round(time.monotonic() - began)
        result["ready_s"] = round(
            _wait("every stable Ready", lambda: _all_ready(api, rollouts), 3600)
        )
        port = free_port()
        config_path = work / "config.yaml"
        config_path.write_text(yaml.safe_dump(_config(prom.url, rollouts, port, declare, workers)))
        generations = _canary_generations(api, rollouts)
        log_path = work / "daemon.log"
        with log_path.open("wb") as log_file:
            daemon = subprocess.Popen(
                daemon_command(config_path, cp.kubeconfig_path),
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            started = time.monotonic()

            ticked: set[str] = set()
            offset = 0

            def ticked_all() -> bool:
                # From the log, not /metrics: rendering 10,000 rollouts' metrics costs the
                # daemon seconds of CPU, and this asks every 2 s.
                nonlocal offset
                if daemon.poll() is not None:
                    raise RuntimeError(f"the daemon exited {daemon.returncode}; see {log_path}")
                with log_path.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read()
                complete = chunk[: chunk.rfind(b"\n") + 1]
                offset += len(complete)
                for line in complete.splitlines():
                    if b'"event": "tick"' in line:
                        ticked.add(json.loads(line)["rollout"])
                return len(ticked) >= rollouts

            _wait("every rollout ticked once", ticked_all, 1800)
            result["startup_s"] = round(time.monotonic() - started, 1)
            result["startup_cpu_s"] = round(_proc(daemon.pid)["cpu"], 1)
            result["startup_writes"] = _canary_generations(api, rollouts) - generations

            # ---- idle ----
            time.sleep(INTERVAL_S)  # let the start-up spread settle into phase
            # /metrics is read outside the CPU window: its rendering is not the daemon's work.
            m0 = _metrics(daemon_port := port)
            p0, t0 = _proc(daemon.pid), time.monotonic()
            time.sleep(idle_s)
            p1, t1 = _proc(daemon.pid), time.monotonic()
            m1 = _metrics(daemon_port)
            minutes = (t1 - t0) / 60
            requests, calls = _requests(_delta(m1, m0, "autocanary_kube_requests_total"))
            lag = _delta(m1, m0, "autocanary_tick_lag_seconds_bucket")
            result["idle"] = {
                "seconds": round(t1 - t0),
                "cpu_s_per_min": round((p1["cpu"] - p0["cpu"]) / minutes, 2),
                "rss_mib": round(p1["rss"]),
                "threads": int(p1["threads"]),
                "requests_per_s": round(requests / (t1 - t0), 2),
                "calls": calls,
                "ticks": int(
                    m1.get("autocanary_tick_duration_seconds_count", 0)
                    - m0.get("autocanary_tick_duration_seconds_count", 0)
                ),
                "lag_p50": _quantile_from_buckets(lag, 0.5),
                "lag_p99": _quantile_from_buckets(lag, 0.99),
            }

            # ---- a wave of releases ----
            wave = list(range(0, rollouts, max(1, round(1 / wave_share))))
            seen: dict[str, float] = {}
            written: dict[str, float] = {}
            stop = threading.Event()
            _watch_events(api, namespaces, seen, written, stop)
            time.sleep(2)  # the watches are established
            sent: dict[str, float] = {}
            local = threading.local()

            def release(i: int) -> None:
                if not hasattr(local, "apps"):
                    local.apps = client.AppsV1Api(cp.api_client())
                patch = {"spec": {"template": {"metadata": {"labels": {"version": "v2"}}}}}
                local.apps.patch_namespaced_deployment(
                    f"app{i}-canary", _namespace(i), patch, _request_timeout=60
                )
                sent[f"app{i}-canary"] = time.monotonic()

            m0 = _metrics(daemon_port)
            p0, t0 = _proc(daemon.pid), time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(release, wave))
            result["wave_patch_s"] = round(time.monotonic() - t0, 1)
            try:
                _wait("every release detected", lambda: len(seen) >= len(wave), 4 * INTERVAL_S)
            except TimeoutError as e:  # report what was detected
                print(f"not every release detected: {e}", file=sys.stderr)
            time.sleep(max(0.0, INTERVAL_S - (time.monotonic() - t0)))
            p1, t1 = _proc(daemon.pid), time.monotonic()
            m1 = _metrics(daemon_port)
            stop.set()
            delays = [seen[k] - sent[k] for k in sent if k in seen]
            writes = [written[k] - sent[k] for k in sent if k in written]
            requests, calls = _requests(_delta(m1, m0, "autocanary_kube_requests_total"))
            lag = _delta(m1, m0, "autocanary_tick_lag_seconds_bucket")
            result["wave"] = {
                "releases": len(wave),
                "detected": len(delays),
                "delay_p50_s": round(statistics.median(delays), 2) if delays else None,
                "delay_p99_s": round(_percentile(delays, 0.99), 2) if delays else None,
                "delay_max_s": round(max(delays), 2) if delays else None,
                "first_write_p50_s": round(statistics.median(writes), 2) if writes else None,
                "first_write_p99_s": round(_percentile(writes, 0.99), 2) if writes else None,
                "seconds": round(t1 - t0),
                "cpu_s_per_min": round((p1["cpu"] - p0["cpu"]) / ((t1 - t0) / 60), 2),
                "requests_per_s": round(requests / (t1 - t0), 2),
                "calls": calls,
                "lag_p50": _quantile_from_buckets(lag, 0.5),
                "lag_p99": _quantile_from_buckets(lag, 0.99),
            }
            cpu = _proc(daemon.pid)["cpu"]
            _metrics(daemon_port)  # what one Prometheus scrape of the daemon costs it
            result["metrics_scrape_cpu_s"] = round(_proc(daemon.pid)["cpu"] - cpu, 2)
            final = _proc(daemon.pid)
            result["peak_rss_mib"] = round(final["hwm"])
            result["threads"] = int(final["threads"])
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
            api.close()  # type: ignore[no-untyped-call]
    return result


def _row(r: dict[str, Any]) -> str:
    idle, wave = r["idle"], r["wave"]
    return (
        f"| {r['rollouts']:,} | {idle['cpu_s_per_min']} | {wave['cpu_s_per_min']} "
        f"| {r['peak_rss_mib']} MiB | {r['threads']} | {idle['requests_per_s']} "
        f"| {wave['requests_per_s']} | {idle['lag_p50']} / {idle['lag_p99']} "
        f"| {wave['first_write_p50_s']} / {wave['first_write_p99_s']} s "
        f"| {wave['delay_p50_s']} / {wave['delay_p99_s']} s "
        f"({wave['detected']}/{wave['releases']}) "
        f"| {r['startup_s']} s, {r['startup_writes']} writes |"
    )


HEADER = (
    "| rollouts | CPU-s/min idle | CPU-s/min wave | peak RSS | threads | API req/s idle "
    "| API req/s wave | tick lag p50 / p99 | first write p50 / p99 | ReleaseDetected Event "
    "p50 / p99 | start-up |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    """Run the benchmark for each N asked and print (and keep) the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rollouts", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--idle", type=float, default=120.0, help="idle seconds measured")
    parser.add_argument("--wave", type=float, default=0.1, help="share of rollouts released")
    parser.add_argument(
        "--declare", action="store_true", help="declare the rollouts on their Deployments"
    )
    parser.add_argument("--workers", type=int, help="daemon.workers (default: the daemon's)")
    args = parser.parse_args()
    for n in args.rollouts:
        result = run(n, args.idle, args.wave, args.declare, args.workers)
        row = _row(result)
        print(HEADER)
        print(row)
        print(json.dumps(result, indent=2))
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as out:
            stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
            how = ", declared on their Deployments" if args.declare else ""
            how += f", {args.workers} workers" if args.workers is not None else ""
            out.write(f"\n### {n:,} rollouts{how} ({stamp})\n\n{HEADER}\n{row}\n\n")
            out.write(f"```json\n{json.dumps(result, indent=2)}\n```\n")


if __name__ == "__main__":
    main()
