"""autocanary and Argo Rollouts side by side on the test bed: same app, traffic, Prometheus, faults.

Every run is one release in a namespace of its own on one local control plane
(the test bed's kube-apiserver, KWOK, pods run as local processes): the demo
app (testpage, 4 replicas, the stable at 1% errors and 100 ms ± 50 ms), the
probe at the same rate through the Service, a Prometheus of its own
discovering the pods (kubernetes_sd_configs) at a 15 s scrape, and one
controller as a real process watching that namespace:

- ``autocanary``: the daemon (``autocanary run``) with config/testpage.yaml's
  rollout as shipped (steps, interval, warm-up, limits, checks), only its
  names and addresses set for the bed;
- ``autocanary-seq``: the same, judged by the sequential judge
  (``analysis.sequential`` with the stable's p90/p99 as latency boundaries)
  instead of the checks;
- ``argo-doc``: Argo Rollouts' controller (``hack/argo-rollouts/build.sh``,
  out of cluster with the bed's kubeconfig, ``--namespaced``), a Rollout of the
  same pod template with basic canary (replica ratio, no traffic router) and
  background analysis from the first step, judged by the AnalysisTemplate of
  Argo's documentation as written: canary success rate from ``irate`` over 5m,
  ``interval: 5m``, ``successCondition: result[0] >= 0.95``, ``failureLimit: 3``,
  Argo's default progress deadline (600 s, no abort);
- ``argo-tuned``: the same Rollout judged every 30 s (after 30 s, autocanary's
  warm-up) on the canary's error ratio over 1m (``<= 3%``) and its p90 over
  the stable's (``<= 1.2``), ``failureLimit: 1`` (autocanary's); progress
  deadline 300 s with ``progressDeadlineAbort`` (autocanary's 5m). The 3% is
  the lowest threshold that rolls back about 1 healthy release in 100 at this
  traffic, as ``bench/argo_calibration.py`` simulates the check (2.5%, which
  the first matrix ran, rolls back 7%; it rolled back 2 of 20 there); the
  healthy runs check it.

Steps: autocanary's shipped 1 pod (5m), 10% (2m), 50% (2m), promotion, with
4 replicas and ``scaleDownStable``, is 1:3, 1:3, 2:2; Argo's
``setWeight`` 25 (pause 5m), 25 (pause 2m), 50 (pause 2m), then 100, which is
the same split. Where they differ: Argo's background analysis spans the whole
release, autocanary's checks restart their warm-up at each step; Argo
promotes by replacing the stable's ReplicaSet, autocanary by rolling the
stable Deployment to the new template.

Scenarios (the fault is in the canary from its start): ``healthy`` (the
canary as the stable, repeated ``--repeats`` times, in parallel namespaces,
to count false rollbacks), ``errors`` (1% -> 5%), ``latency`` (x1.5:
150 ms ± 75 ms) and ``unready`` (``FAULT_UNREADY``: never Ready).

Measured per run: the outcome; seconds from fault onset (the first canary
pod's creationTimestamp) to the canary at 0 (the last canary pod's deletion
request: its deletionTimestamp less its grace period), both from the API;
the canary requests and errors the probe counted (its own /metrics); the
controller's CPU seconds and peak RSS (VmHWM) from /proc. A run with no
decision by ``--cap`` minutes is ``undecided``; Argo's ``stuck`` is a
passed progress deadline without an abort (the canary stays), autocanary's
``paused`` its inconclusive policy (the canary stays, an alert is sent).

    nice -n 10 .venv/bin/python bench/versus_argo.py [--repeats 20] [--parallel 8]

Needs the control plane, Prometheus and Argo Rollouts built
(hack/setup.sh, hack/argo-rollouts/build.sh). Prints the table and writes
bench/results/versus_argo.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from autocanary_testbed import argo, binaries
from autocanary_testbed.controlplane import ControlPlane, find_binaries
from autocanary_testbed.stack import CanaryStack, StackSettings, app_service

REPO = Path(__file__).resolve().parents[1]
_STARTING = threading.Semaphore(3)
RESULTS = REPO / "bench" / "results" / "versus_argo.md"
APP = "testpage"
REPLICAS = 4
PROBE_RATE = "20/s"
SCRAPE = "15s"
STABLE_ENV = {"FAULT_ERROR_RATE": "0.01", "FAULT_LATENCY": "100ms±50ms"}
SCENARIOS: dict[str, dict[str, str]] = {
    "healthy": dict(STABLE_ENV),
    "errors": {**STABLE_ENV, "FAULT_ERROR_RATE": "0.05"},
    "latency": {**STABLE_ENV, "FAULT_LATENCY": "150ms±75ms"},
    "unready": {**STABLE_ENV, "FAULT_UNREADY": "true"},
}
CONFIGS = ("autocanary", "autocanary-seq", "argo-doc", "argo-tuned")
ARGO_STEPS = (
    {"setWeight": 25},
    {"pause": {"duration": "5m"}},
    {"setWeight": 25},
    {"pause": {"duration": "2m"}},
    {"setWeight": 50},
    {"pause": {"duration": "2m"}},
)
_VERSION = 'target="testpage",version="{{args.version}}"'
_STABLE = 'target="testpage",version="{{args.stable-version}}"'


def argo_metrics(config: str, prometheus: str) -> list[dict[str, Any]]:
    """The AnalysisTemplate's metrics of ``argo-doc`` or ``argo-tuned`` (see the docstring)."""
    if config == "argo-doc":
        return [
            {
                "name": "success-rate",
                "interval": "5m",
                "successCondition": "result[0] >= 0.95",
                "failureLimit": 3,
                "provider": {
                    "prometheus": {
                        "address": prometheus,
                        "query": (
                            f'sum(irate(probe_requests_total{{{_VERSION},code!~"5..|error"}}[5m]))'
                            f" / sum(irate(probe_requests_total{{{_VERSION}}}[5m]))"
                        ),
                    }
                },
            }
        ]
    p90 = (
        "histogram_quantile(0.9, sum by (le) "
        "(rate(probe_request_duration_seconds_bucket{{{}}}[1m])))"
    )
    return [
        {
            "name": "error-rate",
            "initialDelay": "30s",
            "interval": "30s",
            "successCondition": "result[0] <= 0.03",
            "failureLimit": 1,
            "provider": {
                "prometheus": {
                    "address": prometheus,
                    "query": (
                        f'(sum(rate(probe_requests_total{{{_VERSION},code=~"5..|error"}}[1m]))'
                        f" or vector(0)) / sum(rate(probe_requests_total{{{_VERSION}}}[1m]))"
                    ),
                }
            },
        },
        {
            "name": "latency-p90-vs-stable",
            "initialDelay": "30s",
            "interval": "30s",
            "successCondition": "result[0] <= 1.2",
            "failureLimit": 1,
            "provider": {
                "prometheus": {
                    "address": prometheus,
                    "query": f"{p90.format(_VERSION)} / {p90.format(_STABLE)}",
                }
            },
        },
    ]


def shipped_rollout() -> dict[str, Any]:
    """config/testpage.yaml's one rollout, as shipped."""
    loaded: dict[str, Any] = yaml.safe_load((REPO / "config" / "testpage.yaml").read_text())
    rollout: dict[str, Any] = loaded["rollouts"][0]
    return rollout


def autocanary_settings(namespace: str) -> StackSettings:
    """The stack of an autocanary run (its daemon's config is :func:`autocanary_config`'s)."""
    return StackSettings(
        namespace=namespace,
        app=APP,
        replicas=REPLICAS,
        stable_env=STABLE_ENV,
        probe_rate=PROBE_RATE,
        scrape_interval=SCRAPE,
    )


def autocanary_config(config: str, stack: CanaryStack) -> dict[str, Any]:
    """The daemon's config: the bed's addresses, the shipped rollout in the stack's namespace."""
    rollout = {**shipped_rollout(), "namespace": stack.namespace}
    rollout.pop("alerts", None)  # the shipped sinks (Slack) are replaced by the bed's
    if config == "autocanary-seq":
        analysis = dict(rollout["analysis"])
        analysis.pop("checks")
        analysis["sequential"] = {"latencyQuantiles": [0.9, 0.99]}
        rollout["analysis"] = analysis
    daemon_config = stack.config()
    daemon_config["rollouts"] = [rollout]
    return daemon_config


@dataclass
class Run:
    """One release's measurements."""

    config: str
    scenario: str
    outcome: str = "error"
    to_zero_s: float | None = None
    canary_requests: float = 0.0
    canary_errors: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mib: float = 0.0
    wall_s: float = 0.0
    note: str = ""


@dataclass
class CanaryPods:
    """Canary pods seen over a release: earliest creation, latest deletion request."""

    created: dict[str, datetime] = field(default_factory=dict)
    deleted: dict[str, datetime] = field(default_factory=dict)

    def observe(self, pods: Sequence[Mapping[str, Any]]) -> None:
        """Record the pods' API timestamps.

        A pod deleted at once (no grace period) can be gone between two polls
        without ever being seen with its deletionTimestamp: its deletion is then
        taken as this poll's time, a bound at most one poll late.
        """
        now = datetime.now(UTC)
        for pod in pods:
            meta = pod["metadata"]
            self.created.setdefault(meta["name"], argo.api_time(meta["creationTimestamp"]))
            if meta.get("deletionTimestamp"):
                grace = meta.get("deletionGracePeriodSeconds") or 0
                asked = argo.api_time(meta["deletionTimestamp"]).timestamp() - grace
                self.deleted[meta["name"]] = datetime.fromtimestamp(asked, UTC)
        present = {pod["metadata"]["name"] for pod in pods}
        for name in self.created.keys() - present - self.deleted.keys():
            self.deleted[name] = now

    def live(self, pods: Sequence[Mapping[str, Any]]) -> int:
        """How many of ``pods`` are not being deleted."""
        return sum(1 for p in pods if not p["metadata"].get("deletionTimestamp"))

    def to_zero_s(self) -> float | None:
        """Seconds from the first canary pod's creation to the last deletion request."""
        if not self.created or set(self.created) - set(self.deleted):
            return None
        return (max(self.deleted.values()) - min(self.created.values())).total_seconds()


def canary_pods(stack: CanaryStack) -> list[dict[str, Any]]:
    """Every pod of version v2 in the stack's namespace (deleting ones included)."""
    response: Any = stack.core.list_namespaced_pod(
        stack.namespace, label_selector="version=v2", _preload_content=False, _request_timeout=10
    )
    items: list[dict[str, Any]] = json.loads(response.data)["items"]
    return items


def probe_counts(stack: CanaryStack) -> tuple[float, float]:
    """(requests, errors) the probe counted against v2."""
    assert stack.probe is not None
    samples = stack.probe.samples("probe_requests_total")
    v2 = [(labels, value) for labels, value in samples if labels.get("version") == "v2"]
    errors = sum(
        v for labels, v in v2 if labels["code"].startswith("5") or labels["code"] == "error"
    )
    return sum(v for _, v in v2), errors


def run_one(
    cp: ControlPlane, build: Path, workdir: Path, config: str, scenario: str, cap_s: float
) -> Run:
    """One release of ``scenario`` under ``config`` in a namespace of its own."""
    run = Run(config, scenario)
    namespace = f"vs-{config}-{scenario}-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    argo_run = config.startswith("argo")
    if argo_run:
        settings = StackSettings(
            namespace=namespace,
            app=APP,
            replicas=REPLICAS,
            probe_rate=PROBE_RATE,
            scrape_interval=SCRAPE,
            # The AnalysisTemplate needs Prometheus's address, known once the stack runs:
            # it is created then, and the release points the Rollout's analysis at it.
            app_objects=(
                argo.rollout(
                    APP,
                    "v1",
                    replicas=REPLICAS,
                    steps=ARGO_STEPS,
                    env=STABLE_ENV,
                    progress_deadline_s=300 if config == "argo-tuned" else None,
                    progress_deadline_abort=config == "argo-tuned",
                ),
                app_service(APP),
            ),
        )
    else:
        settings = autocanary_settings(namespace)
    stack = CanaryStack(cp, workdir / namespace, settings)
    controller = None
    try:
        # Three stacks start at a time: ten at once on two cores took minutes each.
        with _STARTING:
            if argo_run:
                # Started before its namespace exists: it lists its objects from then on.
                controller, _ = argo.start_controller(
                    build, cp.kubeconfig_path, namespace, workdir / namespace / "logs"
                )
            stack.start(daemon=False)
            if not argo_run:
                daemon = stack.start_daemon(
                    config=autocanary_config(config, stack), ready_timeout=180
                )
        pods = CanaryPods()
        decided: Callable[[], str | None]
        if argo_run:
            rollout = argo.ArgoRollout(stack.api, namespace, APP)
            template = argo.analysis_template(config, argo_metrics(config, stack.prometheus.url))
            template["metadata"]["namespace"] = namespace
            rollout.custom.create_namespaced_custom_object(
                argo.GROUP, argo.API_VERSION, namespace, "analysistemplates", template
            )
            rollout.release("v2", config, env=SCENARIOS[scenario], starting_step=1)
            decided = lambda: rollout.outcome("v2")  # noqa: E731
            process = controller
        else:
            process = daemon
            stack.write_config(autocanary_config(config, stack))
            stack.release("v2", env=SCENARIOS[scenario])

            def decided() -> str | None:
                state = stack.state()
                if state.canary_version == "v2" and state.phase in (
                    "succeeded",
                    "rolledBack",
                    "paused",
                ):
                    return {"succeeded": "promoted"}.get(state.phase, state.phase)
                return None

        assert process is not None
        deadline = time.monotonic() + cap_s
        outcome = None
        while time.monotonic() < deadline:
            current = canary_pods(stack)
            pods.observe(current)
            outcome = decided()
            # A decision that leaves the canary in place (promoted, paused, stuck) ends the
            # run at once; a rollback once no canary pod is left.
            if outcome is not None and (outcome != "rolledBack" or not pods.live(current)):
                break
            time.sleep(2)
        current = canary_pods(stack)
        pods.observe(current)
        run.outcome = outcome or "undecided"
        run.to_zero_s = pods.to_zero_s() if outcome == "rolledBack" else None
        run.canary_requests, run.canary_errors = probe_counts(stack)
        use = argo.usage(process.pid)
        run.cpu_s, run.peak_rss_mib = use.cpu_seconds, use.peak_rss_mib
    except Exception as e:  # noqa: BLE001 -- one failed run is reported, the rest go on
        run.note = f"{type(e).__name__}: {e}"[:300]
        traceback.print_exc()
    finally:
        run.wall_s = time.monotonic() - started
        if controller is not None:
            controller.stop()
        stack.stop()
    print(f"[versus-argo] {run}", file=sys.stderr, flush=True)
    return run


def _fmt(values: Sequence[float], digits: int = 0) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def table(runs: Sequence[Run]) -> str:
    """The results as a markdown table, one row per config and scenario."""
    lines = [
        "| config | scenario | runs | outcomes | onset to canary at 0 (s) "
        "| canary requests / errors served | controller CPU s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for config in CONFIGS:
        for scenario in SCENARIOS:
            cell = [r for r in runs if r.config == config and r.scenario == scenario]
            if not cell:
                continue
            outcomes: dict[str, int] = {}
            for r in cell:
                outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
            said = ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items()))
            if scenario == "healthy":
                said += f" (false rollbacks {outcomes.get('rolledBack', 0)}/{len(cell)})"
            zero = [r.to_zero_s for r in cell if r.to_zero_s is not None]
            served = [r for r in cell if r.outcome != "error"]
            req = _fmt([r.canary_requests for r in served])
            err = _fmt([r.canary_errors for r in served])
            lines.append(
                f"| {config} | {scenario} | {len(cell)} | {said} | {_fmt(zero)} | {req} / {err} | "
                f"{_fmt([r.cpu_s for r in served], 1)} | {_fmt([r.peak_rss_mib for r in served])} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the matrix, print the table, write the results file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="healthy releases per config")
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--scenarios", nargs="*", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--parallel", type=int, default=8, help="releases at once (namespaces)")
    parser.add_argument("--cap", type=float, default=15, help="minutes before a run is undecided")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to save the table")
    parser.add_argument("--no-save", action="store_true", help="print the table only")
    parser.add_argument("--label", default="", help="a line saying how this run was reduced")
    args = parser.parse_args(argv)

    # Only Argo's runs need its build; autocanary's alone run without it.
    argo_wanted = any(c.startswith("argo") for c in args.configs)
    build = binaries.find_argo_rollouts() if argo_wanted else Path()
    jobs = [
        (config, scenario)
        for scenario in args.scenarios
        for config in args.configs
        for _ in range(args.repeats if scenario == "healthy" else 1)
    ]
    # Long runs first, so that the pool's tail is short.
    jobs.sort(key=lambda j: j[1] == "healthy")
    began = time.monotonic()
    with ControlPlane().start(find_binaries()) as cp:
        if argo_wanted:
            with cp.api_client() as api:
                argo.install_crds(api, build)
        work = Path(tempfile.mkdtemp(prefix="versus-argo-"))
        with ThreadPoolExecutor(args.parallel) as pool:
            runs = list(
                pool.map(lambda j: run_one(cp, build, work, j[0], j[1], args.cap * 60), jobs)
            )
    minutes = (time.monotonic() - began) / 60
    text = table(runs)
    print(text)
    header = (
        f"# autocanary versus Argo Rollouts {binaries.ARGO_ROLLOUTS_VERSION} on the test bed\n\n"
        f"`nice -n 10 .venv/bin/python bench/versus_argo.py --repeats {args.repeats} "
        f"--parallel {args.parallel} --cap {args.cap:g}`"
        + (f" ({args.label})" if args.label else "")
        + f"; {len(runs)} releases, {args.parallel} at once, {minutes:.0f} min on 2 shared cores, "
        f"{datetime.now(UTC):%Y-%m-%d}.\n\n" + (__doc__ or "").split("\n\n    nice")[0] + "\n\n"
    )
    failed = [r for r in runs if r.outcome == "error"]
    notes = "".join(f"\n- {r.config} {r.scenario}: {r.note}" for r in failed)
    if not args.no_save:
        args.out.write_text(
            header + text + "\n" + (f"\nRuns that failed:{notes}\n" if notes else "")
        )
        print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
