"""The rehearsal: good and bad releases, end to end on the local control plane, narrated.

``python -m autocanary_testbed.rehearsal`` (``make rehearsal``) starts the
control plane, the demo app with three stable replicas of testpage v1, the
probe, Prometheus, Alertmanager, a webhook receiver and the daemon; ships v2
(healthy) and v3 (10% errors) by canary; then does the same by blue/green in a
namespace of its own (the active and preview Services, a probe on each); tells
what happens as it happens; prints a timeline per release; and leaves nothing
running.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from autocanary.daemon import logs
from autocanary.rollout.state import RolloutState
from autocanary_testbed.controlplane import ControlPlane
from autocanary_testbed.errors import HarnessError
from autocanary_testbed.stack import CanaryStack, StackSettings


@dataclass
class Release:
    """One rehearsed release: what was shipped, what was expected, what happened when."""

    version: str
    expect: str
    env: dict[str, str] = field(default_factory=dict)
    strategy: str = "canary"
    timeline: list[tuple[float, str]] = field(default_factory=list)
    outcome: str = ""


class Narrator:
    """Turns changes in the rollout's state, Events and alerts into lines a person can follow."""

    def __init__(self, stack: CanaryStack, out: TextIO) -> None:
        """Watch ``stack``; write to ``out``."""
        self.stack = stack
        self.out = out
        self.t0 = time.monotonic()
        self._seen_events: set[str] = set()
        self._seen_alerts = 0
        self._last: tuple[Any, ...] | None = None
        self._verdicts = 0
        self.release: Release | None = None

    def say(self, text: str, *, mark: bool = False) -> None:
        """Print one narrated line, stamped with the time since the start."""
        elapsed = time.monotonic() - self.t0
        self.out.write(f"[{int(elapsed // 60):02d}:{elapsed % 60:04.1f}] {text}\n")
        self.out.flush()
        if mark and self.release is not None:
            self.release.timeline.append((elapsed, text))

    def poll(self, state: RolloutState) -> None:
        """Narrate whatever changed since the last poll."""
        stable, canary = self.stack.replicas()
        split = (state.phase, state.step, state.stage, stable, canary)
        if split != self._last:
            self._last = split
            served = self.stack.served_versions()
            share = ", ".join(f"{v}: {n}" for v, n in sorted(served.items()))
            self.say(
                f"  {state.phase:<11} {_where(state, self.stack.settings.blue_green)} "
                f"replicas stable={stable} canary={canary}"
                f"  (pods serving {share or 'none'})"
            )
        for verdict in state.verdicts[self._verdicts_index(state) :]:
            checks = "  ".join(
                f"{name}={_num(c.get('value'))} ({c['verdict']}, {c['threshold']})"
                for name, c in verdict.checks.items()
            )
            where = f"step {verdict.step + 1}"
            if self.stack.settings.blue_green:
                where = ("on the preview", "on live traffic")[min(verdict.step, 1)]
            self.say(f"  analysis {where}: {verdict.verdict.upper():<12} {checks}")
        self._verdicts = len(state.verdicts)
        for event in self.stack.events():
            uid = event["metadata"]["uid"]
            if uid in self._seen_events:
                continue
            self._seen_events.add(uid)
            if event.get("source", {}).get("component") == "autocanary":
                self.say(f"event {event['reason']}: {event['message']}", mark=True)
        alerts = self.stack.receiver.bodies()
        for alert in alerts[self._seen_alerts :]:
            if alert.get("kind") in ("rolledBack", "promoted", "paused"):
                self.say(
                    f"alert -> webhook: [{alert.get('severity')}] {alert.get('kind')}: "
                    f"{alert.get('message')}",
                    mark=True,
                )
        self._seen_alerts = len(alerts)

    def _verdicts_index(self, state: RolloutState) -> int:
        # The state keeps the last few verdicts; after a new release it starts over.
        return self._verdicts if self._verdicts <= len(state.verdicts) else 0


def _where(state: RolloutState, blue_green: bool) -> str:
    if state.phase in ("progressing", "paused") and blue_green:
        # Blue/green's two steps: the preview, then the window after the switch.
        return f"{('preview', 'window ')[min(state.step, 1)]} {state.stage:<12}"
    if state.phase in ("progressing", "paused"):
        return f"step {state.step + 1} {state.stage:<12}"
    return " " * 19


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def rehearse(workdir: Path, out: TextIO, releases: Sequence[Release]) -> bool:
    """Run the releases on fresh stacks (one per strategy); True when each ended as expected."""
    ok = True
    with ControlPlane() as cp:
        out.write(f"control plane up at {cp.server_url}\n")
        for strategy in dict.fromkeys(r.strategy for r in releases):
            mine = [r for r in releases if r.strategy == strategy]
            ok = _rehearse_strategy(cp, workdir / strategy, out, strategy, mine) and ok
    return ok


def _rehearse_strategy(
    cp: ControlPlane, workdir: Path, out: TextIO, strategy: str, releases: Sequence[Release]
) -> bool:
    blue_green = strategy == "blueGreen"
    settings = StackSettings(namespace="demo-bg", blue_green=True)
    if not blue_green:
        settings = StackSettings()
    with CanaryStack(cp, workdir, settings) as stack:
        narrator = Narrator(stack, out)
        pace = (
            f"preview {settings.preview_hold} on Service {stack.preview_service}, then the "
            f"Service {settings.app} switched, the old version kept {settings.window}"
            if blue_green
            else f"steps {[s['canary'] for s in settings.steps]}"
        )
        narrator.say(
            f"== {strategy}: demo app up: {settings.replicas} x testpage "
            f"{settings.stable_version} in namespace "
            f"{settings.namespace} (each pod on its own IP), probe at {settings.probe_rate} "
            f"through the Service's EndpointSlices, Prometheus discovering the pods and "
            f"scraping every {settings.scrape_interval}, daemon running "
            f"(interval {settings.interval}, {pace})"
        )
        for release in releases:
            _run_release(stack, narrator, release)
        return _summary(out, releases, stack)


def _run_release(stack: CanaryStack, narrator: Narrator, release: Release) -> None:
    narrator.release = release
    faults = f" with {release.env}" if release.env else ""
    narrator.say(f"== releasing {release.version}{faults}: expect {release.expect}", mark=True)
    stack.release(release.version, env=release.env)

    def settled(state: RolloutState) -> bool:
        return state.canary_version == release.version and state.phase in (
            "succeeded",
            "rolledBack",
        )

    try:
        final = stack.wait_for(
            settled, 300, f"release {release.version} settled", on_poll=narrator.poll
        )
    except HarnessError as e:
        release.outcome = f"did not settle: {e}"
        narrator.say(release.outcome, mark=True)
        return
    stack.sleep(1.5)  # let the last alerts arrive before the summary
    narrator.poll(final)
    release.outcome = "promoted" if final.phase == "succeeded" else "rolled back"
    narrator.say(f"== {release.version}: {release.outcome} ({final.message})", mark=True)


def _summary(out: TextIO, releases: Sequence[Release], stack: CanaryStack) -> bool:
    out.write("\n==== summary ====\n")
    ok = True
    for release in releases:
        good = release.outcome == release.expect
        ok = ok and good
        out.write(
            f"{release.version}: {release.outcome} (expected {release.expect}) "
            f"{'OK' if good else 'UNEXPECTED'}\n"
        )
        for elapsed, text in release.timeline:
            out.write(f"   {elapsed:6.1f}s  {text[:160]}\n")
    managers = sorted({a["labels"].get("alertname", "?") for a in stack.alertmanager_alerts()})
    out.write(f"Alertmanager holds: {', '.join(managers) or 'nothing'}\n")
    out.write(f"logs and config kept in {stack.workdir}\n")
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m autocanary_testbed.rehearsal``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--workdir", type=Path, help="where logs and configs go (default: a temp dir)"
    )
    parser.add_argument("--verbose", action="store_true", help="show the test bed's own logs")
    args = parser.parse_args(argv)
    logs.configure("info" if args.verbose else "warning", "console")
    logging.getLogger().setLevel(logging.INFO if args.verbose else logging.WARNING)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="autocanary-rehearsal-"))
    workdir.mkdir(parents=True, exist_ok=True)
    releases = [
        Release("v2", "promoted"),
        Release("v3", "rolled back", env={"FAULT_ERROR_RATE": "0.1"}),
        Release("v2", "promoted", strategy="blueGreen"),
        Release("v3", "rolled back", env={"FAULT_ERROR_RATE": "0.1"}, strategy="blueGreen"),
    ]
    started = time.monotonic()
    try:
        ok = rehearse(workdir, sys.stdout, releases)
    except HarnessError as e:
        print(f"rehearsal failed: {e}", file=sys.stderr)
        return 1
    print(
        f"rehearsal finished in {time.monotonic() - started:.0f}s: "
        f"{'as expected' if ok else 'UNEXPECTED OUTCOME'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
