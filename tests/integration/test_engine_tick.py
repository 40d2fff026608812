"""``autocanary.engine.RolloutEngine.tick()`` step by step on real Deployments.

A real kube-apiserver (KWOK makes pods Ready), a real Prometheus (empty: every
query answers nothing, so every interval is inconclusive), a Notifier posting
to a local webhook receiver, and a clock the test moves. No scheduler: each
``tick()`` is called by the test, and what it did is read back from the
cluster (replicas, the state annotation, Events), the receiver and the metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from prometheus_client import generate_latest

from autocanary import state as state_codec
from autocanary.config import PrometheusConfig, RolloutConfig, WebhookSink
from autocanary.engine import RolloutEngine, TickResult
from autocanary.errors import StateCorrupt
from autocanary.kube import DeploymentRecord, KubeClient
from autocanary.metrics import DaemonMetrics
from autocanary.notify import Backoff, Notifier
from autocanary.prometheus import PrometheusClient
from autocanary.state import COMMAND_ANNOTATION, STATE_ANNOTATION, RolloutState
from autocanary_testbed.apps import start_probe, start_testpage
from autocanary_testbed.monitoring import PrometheusServer, ScrapeTarget
from autocanary_testbed.procs import ProcessGroup
from autocanary_testbed.receiver import AlertReceiver
from autocanary_testbed.serviceproxy import ServiceProxy
from autocanary_testbed.stack import app_deployment
from autocanary_testbed.waiting import wait_until

pytestmark = pytest.mark.integration

PrometheusFactory = Callable[..., PrometheusServer]
WAIT_S = 90.0  # a bound for a hang on a loaded 2-core machine, not a timing expectation
STABLE, CANARY = "web", "web-canary"
ALL_KINDS = [
    "releaseDetected",
    "stepAdvanced",
    "analysisFailed",
    "inconclusive",
    "paused",
    "resumed",
    "progressDeadlineExceeded",
    "rolledBack",
    "promoted",
]


class Clock:
    """The engine's clock: starts at the real time, moves only when the test says so.

    With ``real=True`` it is the real time (for analysis over live Prometheus data).
    """

    def __init__(self, *, real: bool = False) -> None:
        self.real = real
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return datetime.now(UTC) if self.real else self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


class InterleavingKube(KubeClient):
    """A KubeClient that lets a test run another writer right before the next state write."""

    def __init__(self, api: client.ApiClient) -> None:
        super().__init__(api, identity="itest-engine")
        self.before_write: Callable[[], None] | None = None
        self.writes = 0

    def write_state(
        self,
        deployment: DeploymentRecord,
        state_json: str,
        *,
        consume_command: bool,
        replicas: int | None = None,
    ) -> DeploymentRecord:
        hook, self.before_write = self.before_write, None
        if hook is not None:
            hook()
        self.writes += 1
        return super().write_state(
            deployment, state_json, consume_command=consume_command, replicas=replicas
        )


@dataclasses.dataclass
class Rig:
    """Everything a tick touches, and ways to look at it."""

    engine: RolloutEngine
    kube: InterleavingKube
    admin: KubeClient  # a second writer: the CLI, another replica
    clock: Clock
    receiver: AlertReceiver
    notifier: Notifier
    metrics: DaemonMetrics
    namespace: str

    def deployment(self, name: str) -> DeploymentRecord:
        return self.admin.read_deployment(self.namespace, name)

    def state(self) -> RolloutState:
        raw = self.deployment(CANARY).annotations.get(STATE_ANNOTATION)
        assert raw is not None
        return state_codec.loads(raw)

    def replicas(self) -> tuple[int, int]:
        return self.deployment(STABLE).replicas, self.deployment(CANARY).replicas

    def events(self) -> list[dict[str, Any]]:
        """Events autocanary recorded on the canary (the deployment controller's are left out)."""
        return [
            e
            for e in self.admin.list_events(self.namespace, CANARY)
            if (e.get("source") or {}).get("component") == "autocanary"
        ]

    def reasons(self) -> list[str]:
        return [e["reason"] for e in self.events()]

    def alert_kinds(self) -> list[str]:
        self.notifier.flush(timeout=30)
        return [b["kind"] for b in self.receiver.bodies("/oncall")]

    def release(self, version: str) -> None:
        """Ship ``version`` to the canary the way ``kubectl apply`` would: a new pod template."""
        template = self.deployment(CANARY).template
        template["metadata"]["labels"]["version"] = version
        template["spec"]["containers"][0]["image"] = f"autocanary/testpage:{version}"
        self.admin.replace_template(self.namespace, CANARY, template)

    def settle(self) -> None:
        """Wait until the deployment controller has nothing left to write on either Deployment.

        Its status writes change the resourceVersion that guards the engine's state write,
        and a tick racing one is (rightly) a no-op, which would make these steps ambiguous.
        Settled also means every pod asked for is Ready (KWOK).
        """
        for name in (STABLE, CANARY):
            wait_until(
                functools.partial(self.reconciled, name),
                timeout=WAIT_S,
                what=f"{name} reconciled by the deployment controller",
            )

    def reconciled(self, name: str) -> bool:
        return reconciled(self.deployment(name))

    def tick(self) -> TickResult:
        """One tick on a settled cluster."""
        self.settle()
        return self.engine.tick()

    def metrics_text(self) -> str:
        return generate_latest(self.metrics.registry).decode()


def reconciled(d: DeploymentRecord) -> bool:
    conditions = {c["type"]: c for c in d.raw.get("status", {}).get("conditions", [])}
    return (
        d.observed
        and d.replicas == d.current == d.updated == d.ready == d.available
        and conditions.get("Progressing", {}).get("reason") == "NewReplicaSetAvailable"
        and conditions.get("Available", {}).get("status") == "True"
    )


def rollout_config(namespace: str) -> RolloutConfig:
    return RolloutConfig.model_validate(
        {
            "name": "web",
            "namespace": namespace,
            "stable": STABLE,
            "interval": "10s",
            "progressDeadline": "5m",
            "steps": [{"canary": 1, "hold": "10s"}, {"canary": "100%", "hold": "10s"}],
            "analysis": {
                "minRequests": 10,
                "inconclusiveLimit": 2,
                "inconclusivePolicy": "pause",
                "checks": [{"name": "error-rate", "template": "error-rate", "max": "1%"}],
            },
        }
    )


@pytest.fixture
def empty_prometheus(prometheus_factory: PrometheusFactory) -> Iterator[PrometheusClient]:
    server = prometheus_factory([])  # scrapes nothing: every query answers an empty result
    prometheus = PrometheusClient(PrometheusConfig(url=server.url))
    try:
        yield prometheus
    finally:
        prometheus.close()


@contextlib.contextmanager
def build_rig(
    kube_api: client.ApiClient,
    namespace: str,
    prometheus: PrometheusClient,
    config: RolloutConfig,
    clock: Clock,
) -> Iterator[Rig]:
    """Stable (3 replicas) and canary (0) Deployments of v1, and an engine for them."""
    admin = KubeClient(kube_api, identity="itest-admin")
    for name, track, replicas in ((STABLE, "stable", 3), (CANARY, "canary", 0)):
        admin.create_deployment(
            namespace, app_deployment(name, "web", track, "v1", replicas=replicas)
        )
    kube = InterleavingKube(kube_api)
    metrics = DaemonMetrics()
    with AlertReceiver() as receiver:
        sink = WebhookSink.model_validate(
            {
                "name": "oncall",
                "type": "webhook",
                "url": f"{receiver.url}/oncall",
                "on": ALL_KINDS,
                "timeout": "2s",
                "retries": 1,
            }
        )
        notifier = Notifier([sink], metrics=metrics, backoff=Backoff(initial=0.05, maximum=0.1))
        engine = RolloutEngine(
            config,
            kube=kube,
            prometheus=prometheus,
            notifier=notifier,
            metrics=metrics,
            clock=clock,
        )
        try:
            yield Rig(engine, kube, admin, clock, receiver, notifier, metrics, namespace)
        finally:
            notifier.close(timeout=10)


@pytest.fixture
def rig(
    kube_api: client.ApiClient, namespace: str, empty_prometheus: PrometheusClient
) -> Iterator[Rig]:
    with build_rig(
        kube_api, namespace, empty_prometheus, rollout_config(namespace), Clock()
    ) as built:
        yield built


def start_release(rig: Rig) -> None:
    """Idle -> release detected -> first canary pod Ready -> analysing step 1."""
    assert rig.tick().phase == "idle"
    rig.release("v2")
    detected = rig.tick()
    assert [t.reason for t in detected.transitions] == ["ReleaseDetected"]
    assert rig.tick().state.stage == "analysing"


# ---- the release, tick by tick ---------------------------------------------------------------


def test_a_release_is_detected_scaled_awaited_and_never_advanced_on_no_data(rig: Rig) -> None:
    first = rig.tick()
    assert first.phase == "idle"
    assert first.transitions == ()
    assert rig.state().phase == "idle"  # the state annotation exists from the first tick
    assert rig.replicas() == (3, 0)

    rig.release("v2")
    detected = rig.tick()

    assert detected.phase == "progressing"
    assert [t.reason for t in detected.transitions] == ["ReleaseDetected"]
    state = rig.state()
    assert (state.phase, state.step, state.stage) == ("progressing", 0, "waitingReady")
    assert (state.canary_version, state.stable_version, state.total) == ("v2", "v1", 3)
    # The canary's first pod starts before the stable gives one up: capacity never dips.
    assert rig.replicas() == (3, 1)

    # Not Ready yet, or Ready already: either way the stable only shrinks once it is.
    analysing = rig.tick()
    assert analysing.state.stage == "analysing"
    assert rig.state().stage == "analysing"
    assert rig.state().ready_at == rig.clock.now
    assert rig.replicas() == (2, 1)

    # Before a whole interval of data exists, nothing is queried or judged.
    rig.clock.advance(timedelta(seconds=5))
    assert rig.tick().state.verdicts == ()

    # Each interval after that: Prometheus answers nothing, so each verdict is inconclusive.
    for count in (1, 2):
        rig.clock.advance(timedelta(seconds=10))
        result = rig.tick()
        assert result.phase == "progressing"
        assert [t.reason for t in result.transitions] == ["AnalysisInconclusive"]
        state = rig.state()
        assert state.inconclusive == count
        assert [v.verdict for v in state.verdicts] == ["inconclusive"] * count
        assert "no data for the canary" in state.verdicts[-1].reason
        assert state.verdicts[-1].checks["error-rate"]["verdict"] == "inconclusive"
        # The hold (10s) has passed, but inconclusive evidence never advances a step.
        assert (state.step, state.step_passes) == (0, 0)
        assert rig.replicas() == (2, 1)

    # One more than inconclusiveLimit (2): the policy (pause) applies, and people are told.
    rig.clock.advance(timedelta(seconds=10))
    paused = rig.tick()
    assert paused.phase == "paused"
    assert [t.reason for t in paused.transitions] == ["AnalysisInconclusive", "Paused"]
    state = rig.state()
    assert state.phase == "paused"
    assert "inconclusiveLimit 2" in state.message
    assert state.step == 0
    assert rig.replicas() == (2, 1)  # paused where it stood

    assert rig.reasons() == [
        "ReleaseDetected",
        "AnalysisInconclusive",
        "AnalysisInconclusive",
        "AnalysisInconclusive",
        "Paused",
    ]
    types = {e["reason"]: e["type"] for e in rig.events()}
    assert types == {
        "ReleaseDetected": "Normal",
        "AnalysisInconclusive": "Warning",
        "Paused": "Warning",
    }
    kinds = rig.alert_kinds()
    assert kinds == ["releaseDetected", "inconclusive", "inconclusive", "inconclusive", "paused"]
    paused_alert = rig.receiver.bodies("/oncall")[-1]
    assert paused_alert["rollout"] == "web"
    assert paused_alert["namespace"] == rig.namespace
    assert paused_alert["canaryVersion"] == "v2"
    assert paused_alert["checks"][0]["verdict"] == "inconclusive"

    text = rig.metrics_text()
    ns = rig.namespace
    assert f'autocanary_rollout_phase{{namespace="{ns}",phase="paused",rollout="web"}} 1.0' in text
    assert (
        f'autocanary_rollout_phase{{namespace="{ns}",phase="progressing",rollout="web"}} 0.0'
        in (text)
    )
    inconclusive = 'check="error-rate",rollout="web",verdict="inconclusive"'
    assert f"autocanary_check_results_total{{{inconclusive}}} 3.0" in text
    assert 'autocanary_rollout_step{rollout="web"} 1.0' in text
    assert 'autocanary_alert_deliveries_total{outcome="ok",sink="oncall"} 5.0' in text
    assert 'autocanary_tick_duration_seconds_count{rollout="web"}' in text


def test_a_paused_release_resumes_and_aborts_by_command(rig: Rig) -> None:
    start_release(rig)
    rig.admin.set_command(rig.namespace, CANARY, "pause")
    assert rig.tick().phase == "paused"
    assert COMMAND_ANNOTATION not in rig.deployment(CANARY).annotations

    rig.admin.set_command(rig.namespace, CANARY, "abort")
    aborted = rig.tick()

    assert aborted.phase == "rollingBack"
    assert [t.reason for t in aborted.transitions] == ["RolledBack"]
    # Rollback: the canary goes to 0 and the stable back to its total in the same tick.
    assert rig.replicas() == (3, 0)
    assert rig.state().rolled_back_revision == rig.state().revision
    assert rig.reasons()[-2:] == ["Paused", "RolledBack"]
    assert rig.alert_kinds()[-1] == "rolledBack"
    assert 'autocanary_rollbacks_total{namespace="' in rig.metrics_text()


# ---- a concurrent writer ---------------------------------------------------------------------


def test_a_concurrent_writer_aborts_the_tick_and_the_next_tick_consumes_the_command(
    rig: Rig,
) -> None:
    assert rig.tick().phase == "idle"
    rig.release("v2")
    assert rig.tick().phase == "progressing"
    before = rig.deployment(CANARY).annotations[STATE_ANNOTATION]
    events_before = rig.reasons()
    # This tick would start analysing and shrink the stable; the CLI writes first.
    rig.kube.before_write = lambda: rig.admin.set_command(rig.namespace, CANARY, "pause")

    raced = rig.tick()

    assert raced.phase == "progressing"
    assert raced.transitions == ()
    assert raced.state.stage == "waitingReady"  # what was read: nothing was decided on it
    annotations = rig.deployment(CANARY).annotations
    assert annotations[STATE_ANNOTATION] == before  # not overwritten
    assert annotations[COMMAND_ANNOTATION] == "pause"  # the other writer's change stands
    assert rig.replicas() == (3, 1)  # and nothing was acted on
    assert rig.reasons() == events_before

    after = rig.tick()

    assert after.phase == "paused"
    assert [t.reason for t in after.transitions] == ["Paused"]
    annotations = rig.deployment(CANARY).annotations
    assert COMMAND_ANNOTATION not in annotations  # consumed in the same guarded write
    state = rig.state()
    assert state.phase == "paused"
    assert "paused by command" in state.message
    assert rig.replicas() == (3, 1)
    assert rig.reasons() == [*events_before, "Paused"]
    assert rig.kube.writes == 4  # idle, release, the one that conflicted, pause


def test_a_command_set_before_the_tick_read_is_consumed_with_the_state(rig: Rig) -> None:
    start_release(rig)
    rig.admin.set_command(rig.namespace, CANARY, "bogus")

    result = rig.tick()

    assert result.phase == "progressing"
    ignored = [t for t in result.transitions if t.reason == "CommandIgnored"]
    assert len(ignored) == 1
    assert "unknown command" in ignored[0].message
    assert COMMAND_ANNOTATION not in rig.deployment(CANARY).annotations
    assert "CommandIgnored" in rig.reasons()


# ---- a state annotation that cannot be read --------------------------------------------------


def test_a_corrupt_state_annotation_raises_state_corrupt_telling_how_to_recover(
    rig: Rig,
) -> None:
    start_release(rig)
    replicas = rig.replicas()
    reasons = rig.reasons()
    rig.admin.patch_deployment(
        rig.namespace,
        CANARY,
        {"metadata": {"annotations": {STATE_ANNOTATION: '{"phase": "progressing", '}}},
        "hand edit",
    )

    with pytest.raises(StateCorrupt) as caught:
        rig.tick()

    message = str(caught.value)
    assert "not JSON" in message  # what is wrong
    assert f"{rig.namespace}/{CANARY}" in message  # where
    assert STATE_ANNOTATION in message
    assert f"kubectl annotate deployment -n {rig.namespace} {CANARY} {STATE_ANNOTATION}-" in (
        message
    )  # and how to recover
    assert rig.replicas() == replicas  # nothing was done on a state it could not read
    assert rig.reasons() == reasons

    # Following the advice: the rollout starts over from idle, with the cluster as it is.
    rig.admin.patch_deployment(
        rig.namespace, CANARY, {"metadata": {"annotations": {STATE_ANNOTATION: None}}}, "remove"
    )
    again = rig.tick()
    assert again.phase == "progressing"
    assert [t.reason for t in again.transitions] == ["ReleaseDetected"]


def test_a_state_annotation_from_an_unknown_schema_is_corrupt(rig: Rig) -> None:
    rig.admin.patch_deployment(
        rig.namespace,
        CANARY,
        {"metadata": {"annotations": {STATE_ANNOTATION: '{"schema": 99, "phase": "idle"}'}}},
        "future daemon",
    )

    with pytest.raises(StateCorrupt, match="schema 99"):
        rig.tick()
    assert rig.replicas() == (3, 0)


# ---- a whole release on live metrics ---------------------------------------------------------


@pytest.fixture
def group(tmp_workdir: Path) -> Iterator[ProcessGroup]:
    with ProcessGroup(tmp_workdir / "logs") as processes:
        yield processes


@pytest.mark.parametrize(
    ("v2_env", "outcome"),
    [({}, "succeeded"), ({"FAULT_ERROR_RATE": "0.5", "FAULT_SEED": "3"}, "rolledBack")],
    ids=["healthy", "failing"],
)
def test_a_release_judged_on_live_metrics_is_promoted_or_rolled_back(
    v2_env: dict[str, str],
    outcome: str,
    kube_api: client.ApiClient,
    namespace: str,
    group: ProcessGroup,
    prometheus_factory: PrometheusFactory,
) -> None:
    # The traffic the pods would get: testpage v1 and v2 behind one Service, and the probe.
    v1 = start_testpage(group, "v1")
    v2 = start_testpage(group, "v2", env=v2_env)
    with ServiceProxy() as proxy:
        proxy.set_backends([v1.address, v2.address])
        probe = start_probe(group, ["--target", f"web={proxy.url}/", "--rate", "40/s"])
        server = prometheus_factory([ScrapeTarget("probe", probe.metrics_address)])
        server.wait_for_target_up("probe", timeout=WAIT_S)
        config = RolloutConfig.model_validate(
            {
                "name": "web",
                "namespace": namespace,
                "stable": STABLE,
                "interval": "5s",
                "progressDeadline": "5m",
                "steps": [{"canary": 1, "hold": "5s"}, {"canary": "100%", "hold": "5s"}],
                "analysis": {
                    "minRequests": 20,
                    "failureLimit": 0,
                    "inconclusiveLimit": 100,
                    "checks": [{"name": "error-rate", "template": "error-rate", "max": "5%"}],
                },
            }
        )
        prometheus = PrometheusClient(PrometheusConfig(url=server.url))
        try:
            with build_rig(kube_api, namespace, prometheus, config, Clock(real=True)) as rig:
                assert rig.tick().phase == "idle"
                rig.release("v2")
                reasons: list[str] = []

                def settled() -> bool:
                    result = rig.tick()
                    reasons.extend(t.reason for t in result.transitions)
                    return result.phase == outcome

                wait_until(settled, timeout=WAIT_S * 2, what=f"the release {outcome}")
                stable = rig.deployment(STABLE)
                state = rig.state()
                events = rig.reasons()
                kinds = rig.alert_kinds()
                text = rig.metrics_text()
        finally:
            prometheus.close()

    assert rig.replicas() == (3, 0)
    passes = [v for v in state.verdicts if v.verdict == "pass"]
    if outcome == "succeeded":
        # An interval short of minRequests on a loaded machine is inconclusive: allowed, not needed.
        decisive = [r for r in reasons if r != "AnalysisInconclusive"]
        assert decisive == ["ReleaseDetected", "StepAdvanced", "Promoting", "Promoted"]
        assert len(passes) >= 2  # one passing interval per step at least
        assert all(v.verdict != "fail" for v in state.verdicts)
        # The stable runs the canary's template now, its own name, selector and role kept.
        assert stable.template["metadata"]["labels"] == {
            "app": "web",
            "track": "stable",
            "version": "v2",
        }
        assert stable.template["spec"]["containers"][0]["image"] == "autocanary/testpage:v2"
        assert stable.selector == {"app": "web", "track": "stable"}
        assert stable.ready == 3
        assert [k for k in kinds if k != "inconclusive"] == [
            "releaseDetected",
            "stepAdvanced",
            "promoted",
        ]
        assert 'autocanary_promotions_total{namespace="' in text
    else:
        assert reasons[0] == "ReleaseDetected"
        assert reasons[-2:] == ["AnalysisFailed", "RolledBack"]
        assert "StepAdvanced" not in reasons
        failed = state.verdicts[-1]
        assert failed.verdict == "fail"
        assert failed.checks["error-rate"]["value"] > 0.05
        assert state.rolled_back_revision == state.revision
        # The stable was never touched: still v1.
        assert stable.template["metadata"]["labels"]["version"] == "v1"
        assert kinds[0] == "releaseDetected"
        assert kinds[-2:] == ["analysisFailed", "rolledBack"]
        assert 'autocanary_rollbacks_total{namespace="' in text
    assert events == reasons  # every transition is an Event, in order
