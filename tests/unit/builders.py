"""Plain-value builders for unit tests of the pure core, and a tiny simulated cluster.

- ``make_rollout(...)``: a valid :class:`RolloutConfig` with short, explicit defaults.
- ``pod_template(...)``: a Deployment pod template as the API returns it.
- ``interval_verdict(kind, at)``: an :class:`IntervalVerdict` with one check.
- :class:`DictSource`: a Prometheus answering each query as told.
- :class:`FakeCluster`: two Deployments that apply a :class:`Desired` and, on ``settle()``,
  do what the Deployment controller would (create pods, make them Ready unless the
  template is marked broken, keep old pods while new ones are not Ready).
- :class:`Driver`: runs the daemon's tick sequence (:func:`autocanary.rollout.tick.run`,
  with the FakeCluster and its verdicts as the ports), then settles, tick after tick
  with an injected clock, recording every decision.

No network, no processes, no sleeping: time is a value the tests move.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from autocanary.analysis import judging
from autocanary.analysis.thresholds import CheckResult, IntervalVerdict
from autocanary.analysis.verdict import Verdict
from autocanary.config.models import RolloutConfig
from autocanary.promql import Sample
from autocanary.rollout import tick
from autocanary.rollout.decision import Decision, DeploymentView, Desired, Observation
from autocanary.rollout.pods import PodView
from autocanary.rollout.revision import JSON, revision_of
from autocanary.rollout.state import RolloutState

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ROLE_LABELS = frozenset({"track"})


def make_rollout(**overrides: Any) -> RolloutConfig:
    """A rollout 'web' in 'shop'; keyword arguments override fields (snake_case or camelCase).

    ``analysis`` given as a dict is merged over the default analysis.
    """
    analysis: JSON = {
        "minRequests": 10,
        "warmup": "0s",  # the tests time steps to the interval; warm-ups are tested on their own
        "checks": [{"name": "errors", "template": "error-rate", "max": "1%"}],
    }
    analysis.update(overrides.pop("analysis", {}))
    data: JSON = {
        "name": "web",
        "namespace": "shop",
        "stable": "web",
        "interval": "30s",
        "progressDeadline": "5m",
        "steps": [
            {"canary": 1, "hold": "1m"},
            {"canary": "50%", "hold": "1m"},
            {"canary": "100%", "hold": "1m"},
        ],
        "analysis": analysis,
    }
    data.update(overrides)
    return RolloutConfig.model_validate(data)


def pod_template(
    image: str = "registry.local/shop/web:1.0",
    *,
    track: str = "stable",
    version: str | None = None,
    env: dict[str, str] | None = None,
) -> JSON:
    """A pod template as read back from the API server (defaults filled in)."""
    labels = {"app": "web", "track": track}
    if version is not None:
        labels["version"] = version
    container: JSON = {
        "name": "web",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
        "resources": {},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    }
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    return {
        "metadata": {"labels": labels, "creationTimestamp": None},
        "spec": {
            "containers": [container],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "securityContext": {},
            "schedulerName": "default-scheduler",
        },
    }


def interval_verdict(
    kind: Verdict, at: datetime, reason: str = "", window: timedelta | None = None
) -> IntervalVerdict:
    """An interval verdict with a single 'errors' check of the same verdict."""
    value = {"pass": 0.001, "fail": 0.2, "inconclusive": None}[kind]
    check = CheckResult("errors", kind, value, None, "<= 0.01", reason or kind)
    return IntervalVerdict(kind, at, (check,), 100.0, reason or f"errors: {kind}", window=window)


class DictSource:
    """Answers each query exactly as told (unknown queries: no data); raises what it is told to."""

    def __init__(self, answers: Mapping[str, float | Exception | None]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, datetime | None]] = []

    def query_value(self, promql: str, at: datetime | None = None) -> float | None:
        self.asked.append((promql, at))
        answer = self.answers.get(promql)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def query_vector(self, promql: str, at: datetime | None = None) -> list[Sample]:
        value = self.query_value(promql, at)
        return [] if value is None else [({}, value)]


def view(
    name: str = "web",
    template: JSON | None = None,
    replicas: int = 4,
    *,
    ready: int | None = None,
    updated: int | None = None,
    current: int | None = None,
    observed: bool = True,
) -> DeploymentView:
    """A settled DeploymentView: every pod of the current template Ready unless told otherwise."""
    ready = replicas if ready is None else ready
    return DeploymentView(
        name=name,
        template=template if template is not None else pod_template(),
        replicas=replicas,
        ready=ready,
        available=ready,
        updated=replicas if updated is None else updated,
        current=replicas if current is None else current,
        generation=1,
        observed_generation=1 if observed else 0,
    )


# ------------------------------------------------------------------ simulated cluster


@dataclass
class FakeDeployment:
    """One Deployment: spec, and pods of the current template ('new') and of older ones ('old')."""

    name: str
    template: JSON
    replicas: int
    new: int = 0  # pods of the current template
    new_ready: int = 0
    old: int = 0  # Ready pods of earlier templates, kept while the new ones are not Ready
    generation: int = 1
    observed_generation: int = 1
    previous: JSON | None = None  # the template of the 'old' pods

    def __post_init__(self) -> None:
        if self.new == 0 and self.old == 0:
            self.new = self.new_ready = self.replicas

    def view(self) -> DeploymentView:
        ready = self.new_ready + self.old
        return DeploymentView(
            name=self.name,
            template=self.template,
            replicas=self.replicas,
            ready=ready,
            available=ready,
            updated=self.new,
            current=self.new + self.old,
            generation=self.generation,
            observed_generation=self.observed_generation,
        )

    def set_replicas(self, replicas: int) -> None:
        if replicas == self.replicas:
            return
        self.replicas = replicas
        self.generation += 1
        # Scaling down removes pods at once; scaling up creates them on settle().
        self.new = min(self.new, replicas)
        self.new_ready = min(self.new_ready, replicas)
        self.old = min(self.old, max(replicas - self.new_ready, 0))

    def set_template(self, template: JSON) -> None:
        if template == self.template:
            return
        self.previous = self.template
        self.template = template
        self.generation += 1
        # A rolling update: the Ready pods of the previous template keep serving.
        self.old = min(self.old + self.new_ready, self.replicas)
        self.new = self.new_ready = 0

    def settle(self, healthy: bool) -> None:
        """What the controllers do before the next tick: pods created, Ready if healthy."""
        self.observed_generation = self.generation
        self.new = self.replicas
        if healthy:
            self.new_ready = self.replicas
            self.old = 0
        else:
            self.new_ready = 0
            self.old = min(self.old, self.replicas)

    def ready(self) -> int:
        return self.new_ready + self.old


@dataclass
class FakeCluster:
    """Stable and canary Deployments of one rollout, as the decision sees them."""

    stable: FakeDeployment
    canary: FakeDeployment
    broken: set[str] = field(default_factory=set)  # revisions whose pods never get Ready
    stuck: set[str] = field(default_factory=set)  # revisions the stable never finishes
    command: str | None = None
    canary_pods: tuple[PodView, ...] = ()  # as the kubelet reports them

    @classmethod
    def create(
        cls,
        total: int = 4,
        stable_image: str = "registry.local/shop/web:1.0",
        canary_replicas: int = 0,
    ) -> FakeCluster:
        """A stable at ``total`` replicas and a canary equal to it (no release)."""
        return cls(
            stable=FakeDeployment("web", pod_template(stable_image), total),
            canary=FakeDeployment(
                "web-canary", pod_template(stable_image, track="canary"), canary_replicas
            ),
        )

    def release(self, image: str, **kw: Any) -> str:
        """Change the canary's template (a new release); return its revision."""
        self.canary.set_template(pod_template(image, track="canary", **kw))
        return self.canary_revision

    @property
    def stable_revision(self) -> str:
        return revision_of(self.stable.template, ROLE_LABELS)

    @property
    def canary_revision(self) -> str:
        return revision_of(self.canary.template, ROLE_LABELS)

    def observe(self) -> Observation:
        return tick.observation(
            self.stable.view(),
            self.canary.view(),
            role_labels=ROLE_LABELS,
            version_label="version",
            command=self.command,
            canary_pods=self.canary_pods,
        )

    def commit(self, current: RolloutState, outcome: Decision) -> bool:
        if outcome.consume_command:
            self.command = None
        return True

    def apply(self, desired: Desired) -> None:
        if desired.stable_template is not None:
            self.stable.set_template(desired.stable_template)
        if desired.stable_replicas is not None:
            self.stable.set_replicas(desired.stable_replicas)
        if desired.canary_replicas is not None:
            self.canary.set_replicas(desired.canary_replicas)

    def settle(self) -> None:
        self.stable.settle(self.stable_revision not in self.stuck | self.broken)
        self.canary.settle(self.canary_revision not in self.broken)

    def serving(self) -> int:
        """Ready pods behind the Service right now."""
        return self.stable.ready() + self.canary.ready()


# ------------------------------------------------------------------ driving decide()

VerdictSource = Callable[[datetime, RolloutState], Verdict]


def always(kind: Verdict) -> VerdictSource:
    return lambda _now, _state: kind


def sequence(*kinds: Verdict, then: Verdict = "pass") -> VerdictSource:
    """Verdicts in this order, then ``then`` for ever."""
    remaining = list(kinds)
    return lambda _now, _state: remaining.pop(0) if remaining else then


@dataclass(frozen=True)
class TickRecord:
    """One tick: when, what was observed, whether analysis ran, what was decided, and after."""

    now: datetime
    obs: Observation
    verdict: IntervalVerdict | None
    decision: Decision
    serving_after_apply: int  # Ready pods right after the Desired was applied
    stable_spec: int
    canary_spec: int


@dataclass
class Driver:
    """Runs the decision against a FakeCluster tick after tick with an injected clock."""

    rollout: RolloutConfig
    cluster: FakeCluster
    state: RolloutState = field(default_factory=RolloutState)
    now: datetime = T0
    tick_every: timedelta = timedelta(seconds=10)
    verdicts: VerdictSource = field(default_factory=lambda: always("pass"))
    window: timedelta | None = None  # how far back each verdict looked (None: not said)
    history: list[TickRecord] = field(default_factory=list)

    def tick(self, command: str | None = None) -> TickRecord:
        if command is not None:
            self.cluster.command = command
        done = tick.run(self.rollout, self.state, self.cluster, self, self.now)
        decision = done.decision
        record = TickRecord(
            self.now,
            done.obs,
            done.verdict,
            decision,
            self.cluster.serving(),
            self.cluster.stable.replicas,
            self.cluster.canary.replicas,
        )
        self.history.append(record)
        self.state = decision.state
        self.cluster.settle()
        self.now += self.tick_every
        return record

    def evaluate(self, state: RolloutState, at: datetime) -> IntervalVerdict:
        """The Metrics port of the tick: the verdict at ``at`` (= ``now``)."""
        return self.analyse(state)

    def analyse(self, state: RolloutState) -> IntervalVerdict:
        """The interval's verdict, where the engine would query Prometheus (subclasses judge)."""
        return interval_verdict(self.verdicts(self.now, state), self.now, window=self.window)

    def run(self, ticks: int) -> list[TickRecord]:
        return [self.tick() for _ in range(ticks)]

    def run_until(self, predicate: Callable[[RolloutState], bool], limit: int = 500) -> TickRecord:
        """Tick until ``predicate(state)`` holds after a tick; fail after ``limit`` ticks."""
        for _ in range(limit):
            record = self.tick()
            if predicate(record.decision.state):
                return record
        raise AssertionError(f"condition not reached in {limit} ticks; state: {self.state}")

    def reasons(self) -> list[str]:
        return [t.reason for record in self.history for t in record.decision.transitions]


def phase_is(*phases: str) -> Callable[[RolloutState], bool]:
    return lambda state: state.phase in phases


def tagged(requests: list[Sample], errors: list[Sample], buckets: list[Sample]) -> list[Sample]:
    """The joined counter query's answer: each counter query's samples with the counter label."""
    label = judging.COUNTER_LABEL
    return [
        ({**labels, label: kind}, value)
        for kind, samples in (("requests", requests), ("errors", errors), ("bucket", buckets))
        for labels, value in samples
    ]
