"""``autocanary.daemon.engine.RolloutEngine.tick()`` step by step on real Deployments.

A real kube-apiserver (KWOK makes pods Ready), a real Prometheus (empty: every
query answers nothing, so every interval is inconclusive), a Notifier posting
to a local webhook receiver, and a clock the test moves. No scheduler: each
``tick()`` is called by the test, and what it did is read back from the
cluster (replicas, the state's ConfigMap, Events), the receiver and the metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from prometheus_client import generate_latest

from autocanary.adapters.kubernetes import DeploymentRecord, KubeClient, StoredState
from autocanary.adapters.notify import Backoff, Notifier
from autocanary.adapters.prometheus import PrometheusClient
from autocanary.config.models import PrometheusConfig, RolloutConfig, WebhookSink
from autocanary.daemon.engine import RolloutEngine, TickResult
from autocanary.daemon.metrics import DaemonMetrics
from autocanary.errors import ResourceNotFound, StateCorrupt
from autocanary.rollout import state as state_codec
from autocanary.rollout.state import (
    COMMAND_ANNOTATION,
    STATE_ANNOTATION,
    RolloutState,
    state_object_name,
)
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


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (no ``except Exception`` catches it)."""


class InterleavingKube(KubeClient):
    """A KubeClient that lets a test run another writer right before the next state write.

    It also notes every state decision written (phase and stage, in order), and
    can "kill" the tick right after the write that records a given transition.
    """

    def __init__(self, api: client.ApiClient) -> None:
        super().__init__(api, identity="itest-engine")
        self.before_write: Callable[[], None] | None = None
        self.kill_after: str | None = None  # an Event reason
        self.kill_after_migration = False
        self.decisions: list[tuple[str, str]] = []

    def save_state(
        self,
        canary: DeploymentRecord,
        stored: StoredState,
        state_json: str,
        *,
        consumed: str | None = None,
    ) -> StoredState:
        hook, self.before_write = self.before_write, None
        if hook is not None:
            hook()
        written = state_codec.loads(state_json)
        decided = (written.phase, written.stage)
        if not self.decisions or self.decisions[-1] != decided:
            self.decisions.append(decided)
        saved = super().save_state(canary, stored, state_json, consumed=consumed)
        if self.kill_after is not None and any(
            n.reason == self.kill_after and n.event for n in written.pending
        ):
            self.kill_after = None
            raise Killed
        if self.kill_after_migration and stored.source == "annotation":
            self.kill_after_migration = False
            raise Killed
        return saved


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

    def stored(self) -> StoredState:
        return self.admin.read_state(self.deployment(CANARY))

    def state(self) -> RolloutState:
        raw = self.stored().text
        assert raw is not None
        return state_codec.loads(raw)

    def write_raw_state(self, text: str) -> None:
        """Write the state's ConfigMap by hand (as ``kubectl edit`` would)."""
        self.admin.save_state(self.deployment(CANARY), self.stored(), text)

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
                # The clock moves by hand here: no cold-start warm-up to wait out.
                "warmup": "0s",
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
    generation = rig.deployment(CANARY).generation
    for _ in range(3):
        first = rig.tick()
        assert first.phase == "idle"
        assert first.transitions == ()
    # An idle rollout costs no write: no state object, the canary untouched.
    assert rig.stored().source == "none"
    assert rig.deployment(CANARY).generation == generation
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
    # Nothing changed, nothing written: neither the state nor the canary.
    written = rig.stored().resource_version
    generation = rig.deployment(CANARY).generation
    rig.tick()
    assert rig.stored().resource_version == written
    assert rig.deployment(CANARY).generation == generation

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
    assert 'autocanary_last_tick_duration_seconds{rollout="web"}' in text
    assert "autocanary_tick_duration_seconds_count " in text  # every rollout's ticks


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


def test_a_release_that_cannot_start_is_blocked_read_back_and_aborted_untouched(
    rig: Rig,
) -> None:
    assert rig.tick().phase == "idle"
    stable_before = rig.deployment(STABLE).template
    # An env-only change under the same version label: nothing tells their metrics apart.
    template = rig.deployment(CANARY).template
    template["spec"]["containers"][0]["env"] = [{"name": "FEATURE", "value": "on"}]
    rig.admin.replace_template(rig.namespace, CANARY, template)

    blocked = rig.tick()
    assert blocked.phase == "blocked"
    assert [t.reason for t in blocked.transitions] == ["Paused"]
    assert "both run version 'v1'" in blocked.transitions[0].message
    # Read back from its ConfigMap tick after tick (it was once refused as corrupt),
    # and as an older daemon wrote it: paused with total 0.
    for _ in range(2):
        assert rig.tick().phase == "blocked"
    older = json.loads(rig.stored().text or "")
    older["phase"] = "paused"
    rig.write_raw_state(json.dumps(older))
    assert rig.tick().phase == "blocked"
    assert rig.alert_kinds() == ["paused"]

    rig.admin.set_command(rig.namespace, CANARY, "abort")
    aborted = rig.tick()
    assert aborted.phase == "rolledBack"
    assert [t.reason for t in aborted.transitions] == ["RolledBack"]
    assert rig.replicas() == (3, 0)
    assert rig.deployment(STABLE).template == stable_before
    assert rig.alert_kinds() == ["paused", "rolledBack"]

    # A distinct version label is a new revision, and it starts.
    rig.release("v2")
    assert [t.reason for t in rig.tick().transitions] == ["ReleaseDetected"]
    assert rig.state().total == 3


# ---- a concurrent writer ---------------------------------------------------------------------


def test_a_concurrent_writer_aborts_the_tick_and_the_next_tick_consumes_the_command(
    rig: Rig,
) -> None:
    assert rig.tick().phase == "idle"
    rig.release("v2")
    assert rig.tick().phase == "progressing"
    before = rig.stored()
    events_before = rig.reasons()

    theirs = state_codec.dumps(
        dataclasses.replace(state_codec.loads(str(before.text)), message="another replica")
    )

    def another_replica() -> None:
        # Another replica writes the state, and the CLI a command.
        rig.admin.save_state(rig.deployment(CANARY), before, theirs)
        rig.admin.set_command(rig.namespace, CANARY, "pause")

    # This tick would start analysing and shrink the stable; the others write first.
    rig.kube.before_write = another_replica

    raced = rig.tick()

    assert raced.phase == "progressing"
    assert raced.transitions == ()
    assert raced.state.stage == "waitingReady"  # what was read: nothing was decided on it
    assert rig.stored().text == theirs  # not overwritten
    annotations = rig.deployment(CANARY).annotations
    assert annotations[COMMAND_ANNOTATION] == "pause"  # the other writer's change stands
    assert rig.replicas() == (3, 1)  # and nothing was acted on
    assert rig.reasons() == events_before

    after = rig.tick()

    assert after.phase == "paused"
    assert [t.reason for t in after.transitions] == ["Paused"]
    annotations = rig.deployment(CANARY).annotations
    assert COMMAND_ANNOTATION not in annotations  # consumed right after the state's write
    state = rig.state()
    assert state.phase == "paused"
    assert "paused by command" in state.message
    assert rig.replicas() == (3, 1)
    assert rig.reasons() == [*events_before, "Paused"]
    # Decided: the release, the start of analysing that conflicted, then pause.
    # (Idle was never written: nothing had changed.)
    assert rig.kube.decisions == [
        ("progressing", "waitingReady"),
        ("progressing", "analysing"),
        ("paused", "waitingReady"),
    ]


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
    assert replicas == (2, 1)
    reasons = rig.reasons()
    rig.write_raw_state('{"phase": "progressing", ')

    for _ in range(2):
        with pytest.raises(StateCorrupt) as caught:
            rig.tick()

    message = str(caught.value)
    assert "not JSON" in message  # what is wrong
    name = state_object_name(CANARY)
    assert f"ConfigMap {rig.namespace}/{name}" in message  # where
    assert f"kubectl delete configmap -n {rig.namespace} {name}" in message  # how to recover
    assert "restarts release v2 at step 1 with its total of 3 replicas" in message
    assert rig.replicas() == replicas  # nothing was done on a state it could not read
    # People are told, once however many ticks find it so: an Event and an alert.
    assert rig.reasons() == [*reasons, "StateCorrupt"]
    corrupt = [b for b in rig.receiver.bodies("/oncall") if b["reason"] == "StateCorrupt"]
    rig.notifier.flush(30)
    corrupt = [b for b in rig.receiver.bodies("/oncall") if b["reason"] == "StateCorrupt"]
    assert len(corrupt) == 1
    assert corrupt[0]["kind"] == "paused"
    assert "not JSON" in corrupt[0]["message"]

    # Following the advice: the release starts over with its total, never shrinking.
    client.CoreV1Api(rig.kube.api_client).delete_namespaced_config_map(name, rig.namespace)
    again = rig.tick()
    assert again.phase == "progressing"
    assert [t.reason for t in again.transitions] == ["StateRecovered"]
    state = rig.state()
    assert (state.total, state.step, state.canary_version) == (3, 0, "v2")
    # Step 1's canary pod is Ready already: stable 2 + canary 1 is the whole total
    # (a new release from the stable's replicas would have counted 2 only).
    assert rig.replicas() == (2, 1)


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("canary_generation", "x", "canary_generation: input should be a valid integer, got 'x'"),
        ("total", 0, "total: a progressing release needs at least 1 replica, got 0"),
        ("verdicts", [{"at": "noon"}], "(verdicts[0].at: input should be a valid datetime"),
    ],
)
def test_every_corrupt_value_is_a_message_an_event_and_an_alert_never_a_crash(
    rig: Rig, field: str, value: object, says: str
) -> None:
    start_release(rig)
    data = json.loads(str(rig.stored().text))
    data[field] = value
    rig.write_raw_state(json.dumps(data))
    with pytest.raises(StateCorrupt, match=re.escape(says)):
        rig.tick()
    assert rig.reasons()[-1] == "StateCorrupt"
    assert "paused" in rig.alert_kinds()
    assert rig.replicas() == (2, 1)


def test_a_crash_right_after_a_transition_is_written_loses_no_event_or_alert(
    rig: Rig, empty_prometheus: PrometheusClient
) -> None:
    start_release(rig)
    rig.admin.set_command(rig.namespace, CANARY, "abort")
    rig.kube.kill_after = "RolledBack"
    with pytest.raises(Killed):
        rig.tick()
    # Written, and nothing else: the canary still has its pod, nobody has been told.
    assert rig.state().phase == "rollingBack"
    assert rig.replicas() == (2, 1)
    assert "RolledBack" not in rig.reasons()
    assert "rolledBack" not in rig.alert_kinds()

    # The next daemon (a new process: new notifier, new metrics) finishes the job.
    metrics = DaemonMetrics()
    sink = rig.notifier.route("rolledBack")
    assert sink == ["oncall"]
    with Notifier(
        [
            WebhookSink.model_validate(
                {
                    "name": "oncall",
                    "type": "webhook",
                    "url": f"{rig.receiver.url}/oncall",
                    "on": ALL_KINDS,
                }
            )
        ],
        metrics=metrics,
    ) as notifier:
        engine = RolloutEngine(
            rig.engine.rollout,
            kube=KubeClient(rig.kube.api_client, identity="itest-next"),
            prometheus=empty_prometheus,
            notifier=notifier,
            metrics=metrics,
            clock=rig.clock,
        )
        rig.settle()
        engine.tick()
        assert rig.replicas() == (3, 0)
        notifier.flush(30)
        rig.settle()
        engine.tick()  # clears what was told
        # Said twice now: the Event exists once, and the alert is not sent again.
        engine.tick()
        notifier.flush(30)
        text = generate_latest(metrics.registry).decode()

    assert rig.reasons().count("RolledBack") == 1
    rolled_back = [b for b in rig.receiver.bodies("/oncall") if b["kind"] == "rolledBack"]
    assert len(rolled_back) == 1
    assert rolled_back[0]["id"].startswith("web.")
    assert rig.state().pending == ()
    assert f'autocanary_rollbacks_total{{namespace="{rig.namespace}",rollout="web"}} 1.0' in text
    # The abort was consumed once: marked with the state, removed by the next daemon unapplied.
    assert "CommandIgnored" not in rig.reasons()
    assert COMMAND_ANNOTATION not in rig.deployment(CANARY).annotations


# ---- a release in flight under a daemon that kept the state in an annotation -----------------


def as_an_older_daemon_left_it(rig: Rig) -> str:
    """Move the state from its ConfigMap onto the canary, where daemons before it kept it."""
    text = str(rig.stored().text)
    client.CoreV1Api(rig.kube.api_client).delete_namespaced_config_map(
        state_object_name(CANARY), rig.namespace
    )
    rig.admin.patch_deployment(
        rig.namespace,
        CANARY,
        {"metadata": {"annotations": {STATE_ANNOTATION: text}}},
        "an older daemon's state write",
    )
    assert rig.stored().source == "annotation"
    return text


def test_a_release_in_flight_under_an_older_daemon_goes_on_where_it_stood(rig: Rig) -> None:
    start_release(rig)
    for seconds in (15, 10):
        rig.clock.advance(timedelta(seconds=seconds))
        assert [t.reason for t in rig.tick().transitions] == ["AnalysisInconclusive"]
    before = rig.state()
    assert (before.step, before.stage, before.inconclusive) == (0, "analysing", 2)
    reasons = rig.reasons()
    as_an_older_daemon_left_it(rig)

    moved = rig.tick()

    stored = rig.stored()
    assert (stored.source, stored.legacy) == ("configmap", None)
    assert STATE_ANNOTATION not in rig.deployment(CANARY).annotations
    after = rig.state()
    # The same release at the same step, with its evidence; nothing started over.
    assert after.revision == before.revision
    assert (after.step, after.stage, after.started_at) == (0, "analysing", before.started_at)
    assert after.verdicts == before.verdicts
    assert moved.transitions == ()
    assert rig.replicas() == (2, 1)
    assert rig.reasons() == reasons
    # Its counters carried over: a third inconclusive interval in a row pauses (limit 2).
    rig.clock.advance(timedelta(seconds=10))
    assert [t.reason for t in rig.tick().transitions] == ["AnalysisInconclusive", "Paused"]


def test_a_daemon_killed_between_moving_the_state_and_removing_the_annotation_loses_nothing(
    rig: Rig,
) -> None:
    start_release(rig)
    rig.clock.advance(timedelta(seconds=15))
    rig.tick()
    old = as_an_older_daemon_left_it(rig)
    assert state_codec.loads(old).inconclusive == 1
    # The tick that moves the state judges an interval too, and dies before the annotation goes.
    rig.clock.advance(timedelta(seconds=10))
    rig.kube.kill_after_migration = True
    with pytest.raises(Killed):
        rig.tick()
    both = rig.stored()
    assert (both.source, both.legacy) == ("configmap", old)
    assert state_codec.loads(str(both.text)).inconclusive == 2  # newer than the annotation

    rig.tick()  # the ConfigMap wins, the annotation goes, the pending notice is told

    assert STATE_ANNOTATION not in rig.deployment(CANARY).annotations
    assert rig.state().inconclusive == 2
    assert rig.reasons().count("AnalysisInconclusive") == 2  # the one written before the kill
    rig.clock.advance(timedelta(seconds=10))
    assert [t.reason for t in rig.tick().transitions] == ["AnalysisInconclusive", "Paused"]
    assert rig.reasons().count("AnalysisInconclusive") == 3


def stable_reasons(rig: Rig) -> list[str]:
    return [
        e["reason"]
        for e in rig.admin.list_events(rig.namespace, STABLE)
        if (e.get("source") or {}).get("component") == "autocanary"
    ]


def test_a_canary_deleted_mid_release_gives_the_stable_its_total_back_at_once(rig: Rig) -> None:
    start_release(rig)
    assert rig.replicas() == (2, 1)
    template = rig.deployment(CANARY).template
    client.AppsV1Api(rig.kube.api_client).delete_namespaced_deployment(CANARY, rig.namespace)

    def gone() -> bool:
        try:
            rig.deployment(CANARY)
        except ResourceNotFound:
            return True
        return False

    wait_until(
        gone,
        timeout=WAIT_S,
        what="the canary gone",
    )

    result = rig.engine.tick()

    assert result.phase == "rolledBack"
    assert rig.deployment(STABLE).replicas == 3
    assert stable_reasons(rig) == ["CanaryDeleted"]
    (event,) = [
        e for e in rig.admin.list_events(rig.namespace, STABLE) if e["reason"] == "CanaryDeleted"
    ]
    assert event["type"] == "Warning"
    assert "scaled back to its 3 replicas" in event["message"]
    rig.notifier.flush(30)
    (alert,) = [b for b in rig.receiver.bodies("/oncall") if b["reason"] == "CanaryDeleted"]
    assert alert["kind"] == "rolledBack"
    assert "rollbacks_total" in rig.metrics_text()
    # Ticks while it stays gone neither shrink nor repeat anything.
    with pytest.raises(ResourceNotFound):
        rig.engine.tick()
    assert stable_reasons(rig) == ["CanaryDeleted"]

    # GitOps puts the canary back: the release starts again from the whole service.
    body = app_deployment(CANARY, "web", "canary", "v2", replicas=0)
    body["spec"]["template"] = template
    rig.admin.create_deployment(rig.namespace, body)
    restarted = rig.tick()
    assert restarted.phase == "progressing"
    assert rig.state().total == 3
    assert rig.replicas() == (3, 1)


def test_a_person_scaling_during_a_release_is_told_when_overridden(rig: Rig) -> None:
    start_release(rig)
    assert rig.replicas() == (2, 1)
    # kubectl scale: the scale subresource, under kubectl's own field manager.
    client.AppsV1Api(rig.kube.api_client).patch_namespaced_deployment_scale(
        STABLE, rig.namespace, {"spec": {"replicas": 5}}, field_manager="kubectl"
    )
    rig.tick()
    assert rig.replicas() == (2, 1)
    (event,) = [
        e
        for e in rig.admin.list_events(rig.namespace, STABLE)
        if e["reason"] == "ReplicasOverridden"
    ]
    assert event["type"] == "Warning"
    assert "kubectl set web to 5 replicas" in event["message"]
    assert "set it back to 2" in event["message"]


def test_a_promotion_superseded_by_a_new_release_is_still_announced(rig: Rig) -> None:
    start_release(rig)
    rig.admin.set_command(rig.namespace, CANARY, "promote")
    assert rig.tick().phase == "promoting"
    rig.release("v3")
    result = rig.tick()
    assert [t.reason for t in result.transitions] == ["Promoted", "ReleaseDetected"]
    assert rig.state().total == 3
    promoted = [e for e in rig.events() if e["reason"] == "Promoted"]
    assert len(promoted) == 1
    assert "superseded by revision" in promoted[0]["message"]
    assert "promoted" in rig.alert_kinds()


def test_an_older_daemons_state_annotation_from_an_unknown_schema_is_corrupt(rig: Rig) -> None:
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
                    "warmup": "1s",
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
        # Told in the same tick, the rollback is sent first: the most urgent news first.
        assert kinds[-2:] == ["rolledBack", "analysisFailed"]
        assert 'autocanary_rollbacks_total{namespace="' in text
    assert events == reasons  # every transition is an Event, in order
