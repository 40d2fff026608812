"""Blue/green in the pure decision: preview, one switch, the live window, switch back.

A :class:`BlueGreenCluster` adds the active and preview Services to the
simulated Deployments: every selector write is recorded, and after every tick's
writes the users' rotation (the Ready pods the active Service selects) is
taken. The properties asserted on every run: the rotation never holds two
versions and never has fewer pods than the total; the active Service is
written exactly when the release says (once to switch, once to switch back).
"""

from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from builders import (
    JSON,
    Driver,
    FakeCluster,
    FakeDeployment,
    make_rollout,
    phase_is,
    pod_template,
    sequence,
)
from pydantic import ValidationError

from autocanary.config.loader import parse_config
from autocanary.config.models import RolloutConfig
from autocanary.rollout.decision import Desired, Observation, decide, live_window
from autocanary.rollout.state import RolloutState, dumps, loads

V1_IMAGE = "registry.local/shop/web:1.0"
V2_IMAGE = "registry.local/shop/web:2.0"
V3_IMAGE = "registry.local/shop/web:3.0"
TOTAL = 4
ACTIVE = {"app": "web", "version": "v1"}


def blue_green(**overrides: Any) -> RolloutConfig:
    """Rollout 'web' as blue/green: a 1m preview, then a 2m window; 30s intervals."""
    settings: JSON = {
        "activeService": "web",
        "previewService": "web-preview",
        "previewHold": "1m",
        "window": "2m",
    }
    settings.update(overrides.pop("blueGreen", {}))
    analysis: JSON = {
        "minRequests": 10,
        "warmup": "0s",
        "checks": [{"name": "errors", "template": "error-rate", "max": "1%"}],
    }
    analysis.update(overrides.pop("analysis", {}))
    data: JSON = {
        "name": "web",
        "namespace": "shop",
        "stable": "web",
        "interval": "30s",
        "progressDeadline": "5m",
        "strategy": "blueGreen",
        "blueGreen": settings,
        "analysis": analysis,
        **overrides,
    }
    return RolloutConfig.model_validate(data)


def labels_of(template: JSON | None) -> dict[str, str]:
    return dict(((template or {}).get("metadata") or {}).get("labels") or {})


def selects(selector: dict[str, str], template: JSON | None) -> bool:
    labels = labels_of(template)
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@dataclass
class BlueGreenCluster(FakeCluster):
    """The Deployments plus the active and preview Services, every write recorded."""

    active: dict[str, str] = field(default_factory=lambda: dict(ACTIVE))
    preview: dict[str, str] = field(default_factory=lambda: {"app": "web", "version": "v1"})
    active_writes: list[dict[str, str]] = field(default_factory=list)
    preview_writes: list[dict[str, str]] = field(default_factory=list)
    # The users' rotation after each tick's writes: Ready pods selected, by version.
    rotations: list[collections.Counter[str]] = field(default_factory=list)

    @classmethod
    def make(cls, total: int = TOTAL) -> BlueGreenCluster:
        return cls(
            stable=FakeDeployment("web", pod_template(V1_IMAGE, version="v1"), total),
            canary=FakeDeployment(
                "web-canary", pod_template(V1_IMAGE, track="canary", version="v1"), 0
            ),
        )

    def release(self, image: str, **kw: Any) -> str:
        kw.setdefault("version", image.rsplit(":", 1)[-1].replace("2.0", "v2").replace("3.0", "v3"))
        return super().release(image, **kw)

    def observe(self) -> Observation:
        return dataclasses.replace(
            super().observe(),
            active_selector=dict(self.active),
            preview_selector=dict(self.preview),
        )

    def apply(self, desired: Desired) -> None:
        super().apply(desired)
        # One write each, of the whole selector, as KubeClient.switch_selector does.
        if desired.active_selector is not None and desired.active_selector != self.active:
            self.active = dict(desired.active_selector)
            self.active_writes.append(dict(self.active))
        if desired.preview_selector is not None and desired.preview_selector != self.preview:
            self.preview = dict(desired.preview_selector)
            self.preview_writes.append(dict(self.preview))
        self.rotations.append(self.users())

    def users(self) -> collections.Counter[str]:
        """Ready pods the active Service selects, by their version label."""
        found: collections.Counter[str] = collections.Counter()
        for deployment in (self.stable, self.canary):
            for template, ready in (
                (deployment.template, deployment.new_ready),
                (deployment.previous, deployment.old),
            ):
                if ready and selects(self.active, template):
                    found[labels_of(template)["version"]] += ready
        return found

    def serving(self) -> int:
        return sum(self.users().values())


def driver(rollout: RolloutConfig | None = None, *, verdicts: Any = None) -> Driver:
    d = Driver(rollout or blue_green(), BlueGreenCluster.make())
    if verdicts is not None:
        d.verdicts = verdicts
    d.cluster.release(V2_IMAGE)
    return d


def cluster(d: Driver) -> BlueGreenCluster:
    assert isinstance(d.cluster, BlueGreenCluster)
    return d.cluster


def assert_users_never_mixed_nor_short(d: Driver) -> None:
    for i, rotation in enumerate(cluster(d).rotations):
        assert len(rotation) == 1, f"tick {i}: the active Service selected {dict(rotation)}"
        assert sum(rotation.values()) >= TOTAL, f"tick {i}: capacity dropped: {dict(rotation)}"


def switch_tick(d: Driver, to: str) -> int:
    """Index of the tick whose writes moved the active Service to version ``to``."""
    before = "v1" if to == "v2" else "v2"
    for i, record in enumerate(d.history):
        if (record.obs.active_selector or {}).get("version") == before and (
            record.decision.desired.active_selector or {}
        ).get("version") == to:
            return i
    raise AssertionError(f"no switch to {to}")


# ------------------------------------------------------------------ config


def test_the_plan_is_a_preview_then_the_window_each_at_the_whole_total() -> None:
    rollout = blue_green()
    assert [(str(s.canary), s.hold) for s in rollout.plan] == [
        ("100%", timedelta(minutes=1)),
        ("100%", timedelta(minutes=2)),
    ]
    assert rollout.scales_down_stable is False


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"strategy": "blueGreen"}, "strategy blueGreen needs 'blueGreen'"),
        (
            {"blueGreen": {"activeService": "web", "previewService": "web-preview"}},
            "'blueGreen' applies only to strategy: blueGreen",
        ),
        (
            {
                "strategy": "blueGreen",
                "blueGreen": {"activeService": "web", "previewService": "web"},
            },
            "'previewService' must name a different Service than 'activeService'",
        ),
        (
            {
                "strategy": "blueGreen",
                "blueGreen": {"activeService": "web", "previewService": "web-preview"},
                "scaleDownStable": False,
            },
            "'scaleDownStable' does not apply to strategy blueGreen",
        ),
    ],
)
def test_a_blue_green_rollout_that_does_not_fit_is_refused_saying_why(
    data: JSON, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        RolloutConfig.model_validate(
            {
                "name": "web",
                "namespace": "shop",
                "stable": "web",
                "analysis": {"checks": [{"name": "errors", "template": "error-rate", "max": 0.01}]},
                **data,
            }
        )


def test_steps_given_to_a_blue_green_rollout_are_refused() -> None:
    with pytest.raises(ValidationError, match="'steps' does not apply to strategy blueGreen"):
        make_rollout(
            strategy="blueGreen",
            blueGreen={"activeService": "web", "previewService": "web-preview"},
        )


def test_a_config_choosing_blue_green_loads_with_its_services() -> None:
    text = """\
prometheus:
  url: http://prometheus:9090
rollouts:
  - name: web
    namespace: shop
    stable: web
    strategy: blueGreen
    blueGreen: {activeService: web, previewService: web-preview, window: 30m}
    analysis:
      checks: [{name: errors, template: error-rate, max: 1%}]
"""
    (rollout,) = parse_config(text, "autocanary.yaml").rollouts
    assert rollout.blue_green is not None
    assert (rollout.blue_green.active_service, rollout.blue_green.preview_service) == (
        "web",
        "web-preview",
    )
    assert [s.hold for s in rollout.plan] == [timedelta(minutes=5), timedelta(minutes=30)]


def test_a_blue_green_rollout_judged_only_by_comparisons_is_refused() -> None:
    relative = {
        "name": "errors",
        "template": "error-rate",
        "relative": {"tolerance": "20%"},
    }
    with pytest.raises(ValidationError, match="needs at least one check with an absolute"):
        blue_green(analysis={"checks": [relative]})


# ------------------------------------------------------------------ releases


def test_a_healthy_release_is_previewed_switched_once_and_promoted() -> None:
    d = driver()

    d.run_until(phase_is("succeeded"))

    c = cluster(d)
    assert c.preview_writes == [{"app": "web", "version": "v2"}]
    assert c.active_writes == [{"app": "web", "version": "v2"}], "one switch, nothing else"
    assert_users_never_mixed_nor_short(d)
    # The preview held its minute on full-size, Ready new pods before the switch...
    switched = d.history[switch_tick(d, "v2")]
    assert switched.now - d.history[0].now >= timedelta(minutes=1)
    assert switched.obs.canary.ready == TOTAL
    assert switched.obs.stable.ready == TOTAL
    # ... and the old version stayed up at full size through the window.
    promoting = next(r for r in d.history if r.decision.state.phase == "promoting")
    assert promoting.now - switched.now >= timedelta(minutes=2)
    assert all(r.stable_spec == TOTAL for r in d.history)
    assert labels_of(c.stable.template)["version"] == "v2"
    assert (c.canary.replicas, c.stable.replicas) == (0, TOTAL)
    assert d.reasons() == ["ReleaseDetected", "Switched", "Promoting", "Promoted"]
    assert "switches from v1 to v2; v1 stays up for 2m" in next(
        t.message for r in d.history for t in r.decision.transitions if t.reason == "Switched"
    )


def test_a_release_failing_on_the_preview_never_touches_the_active_service() -> None:
    d = driver(verdicts=sequence("pass", "fail"))

    d.run_until(phase_is("rolledBack"))

    c = cluster(d)
    assert c.active_writes == []
    assert c.active == ACTIVE
    assert (c.canary.replicas, c.stable.replicas) == (0, TOTAL)
    assert labels_of(c.stable.template)["version"] == "v1"
    assert_users_never_mixed_nor_short(d)
    assert d.reasons()[-2:] == ["AnalysisFailed", "RolledBack"]
    rolled = [t for r in d.history for t in r.decision.transitions if t.reason == "RolledBack"]
    assert "switches back" not in rolled[0].message


def test_a_failure_in_the_window_switches_back_in_the_same_tick_then_ends_the_new_version() -> None:
    # Passing intervals on the preview (the 1m hold needs two), then failing live traffic.
    d = driver(verdicts=sequence("pass", "pass", "pass", then="fail"))

    d.run_until(phase_is("rolledBack"))

    c = cluster(d)
    assert c.active_writes == [{"app": "web", "version": "v2"}, {"app": "web", "version": "v1"}]
    at = next(i for i, r in enumerate(d.history) if r.verdict and r.verdict.verdict == "fail")
    failing = d.history[at]
    assert live_window(d.rollout, d.history[at - 1].decision.state), "failed after the switch"
    # Switched back by the decision that saw the failure: within one interval.
    assert failing.decision.desired.active_selector == {"app": "web", "version": "v1"}
    assert failing.decision.desired.canary_replicas == TOTAL, "the new pods stay until then"
    assert_users_never_mixed_nor_short(d)
    assert (c.canary.replicas, c.stable.replicas) == (0, TOTAL)
    assert labels_of(c.stable.template)["version"] == "v1"
    rolled = next(t for t in failing.decision.transitions if t.reason == "RolledBack")
    assert rolled.kind == "rolledBack"
    assert rolled.warning
    assert "the active Service web switches back to v1" in rolled.message


def test_a_restart_between_the_switch_and_the_end_of_the_window_resumes_where_it_stood() -> None:
    d = driver()
    d.run_until(lambda s: live_window(d.rollout, s) and s.stage == "analysing")
    switched_at = d.history[switch_tick(d, "v2")].now
    written = cluster(d).active_writes.copy()

    # The daemon dies: only the persisted state and the cluster remain.
    state = loads(dumps(d.state))
    resumed = Driver(d.rollout, d.cluster, state=state, now=d.now + timedelta(seconds=40))
    resumed.run_until(phase_is("succeeded"))

    assert cluster(resumed).active_writes == written, "no second switch"
    promoting = next(r for r in resumed.history if r.decision.state.phase == "promoting")
    assert promoting.now - switched_at >= timedelta(minutes=2), "the window was not cut short"
    assert_users_never_mixed_nor_short(resumed)


# ------------------------------------------------------------------ commands


def test_abort_in_the_window_switches_back() -> None:
    d = driver()
    d.run_until(lambda s: live_window(d.rollout, s) and s.stage == "analysing")

    d.tick("abort")
    d.run_until(phase_is("rolledBack"))

    assert cluster(d).active_writes == [
        {"app": "web", "version": "v2"},
        {"app": "web", "version": "v1"},
    ]
    assert_users_never_mixed_nor_short(d)
    assert cluster(d).canary.replicas == 0


def test_promote_on_the_preview_switches_once_the_new_pods_are_ready_then_promotes() -> None:
    d = driver()
    first = d.tick("promote")  # the release starts and is promoted at once: no pods yet

    assert first.decision.state.phase == "promoting"
    assert first.decision.desired.active_selector is None, "not onto pods that are not Ready"
    d.run_until(phase_is("succeeded"))

    assert cluster(d).active_writes == [{"app": "web", "version": "v2"}]
    assert_users_never_mixed_nor_short(d)
    # The stable got the new template only once users were on the new pods.
    template_tick = next(i for i, r in enumerate(d.history) if r.decision.desired.stable_template)
    assert template_tick > switch_tick(d, "v2")


def test_pause_in_the_window_keeps_users_on_the_new_version_and_resume_continues() -> None:
    d = driver()
    d.run_until(lambda s: live_window(d.rollout, s) and s.stage == "analysing")

    d.tick("pause")
    d.run(5)
    assert d.state.phase == "paused"
    assert cluster(d).active == {"app": "web", "version": "v2"}
    d.tick("resume")
    d.run_until(phase_is("succeeded"))

    assert cluster(d).active_writes == [{"app": "web", "version": "v2"}]
    assert_users_never_mixed_nor_short(d)


def test_abort_while_promoting_restores_the_stable_before_switching_back() -> None:
    d = driver()
    d.run_until(phase_is("promoting"))
    c = cluster(d)
    assert labels_of(c.stable.template)["version"] == "v2", "the stable is being promoted"

    d.tick("abort")
    d.run_until(phase_is("rolledBack"))

    assert c.active_writes == [{"app": "web", "version": "v2"}, {"app": "web", "version": "v1"}]
    back = switch_tick(d, "v1")
    assert d.history[back].obs.stable.ready == TOTAL
    assert labels_of(d.history[back].obs.stable.template)["version"] == "v1"
    assert_users_never_mixed_nor_short(d)
    assert (c.canary.replicas, labels_of(c.stable.template)["version"]) == (0, "v1")


# ------------------------------------------------------------------ edges


def test_abort_after_a_promotion_ended_the_new_pods_brings_them_back_before_anything_else() -> None:
    d = driver()
    d.run_until(lambda s: s.phase == "promoting" and cluster(d).canary.replicas == 0)
    c = cluster(d)
    assert labels_of(c.stable.template)["version"] == "v2"

    d.tick("abort")
    d.run_until(phase_is("rolledBack"))

    assert c.active_writes == [{"app": "web", "version": "v2"}, {"app": "web", "version": "v1"}]
    assert_users_never_mixed_nor_short(d)
    assert (c.canary.replicas, labels_of(c.stable.template)["version"]) == (0, "v1")


def test_a_new_revision_after_the_switch_switches_back_first_then_starts_afresh() -> None:
    d = driver()
    d.run_until(lambda s: live_window(d.rollout, s) and s.stage == "analysing")

    cluster(d).release(V3_IMAGE)
    d.run_until(phase_is("rolledBack"))
    assert cluster(d).active == ACTIVE
    d.run_until(lambda s: s.phase == "progressing" and s.canary_version == "v3")
    d.run_until(phase_is("succeeded"))

    assert [w["version"] for w in cluster(d).active_writes] == ["v2", "v1", "v3"]
    # Users were on v2 pods that the v3 template replaced: that capacity is the user's
    # change; what the daemon controls is that it went straight back to v1.
    rotations = cluster(d).rotations
    assert all(len(r) <= 1 for r in rotations), "never two versions at once"


def test_an_active_service_not_selecting_by_version_cannot_start_a_release() -> None:
    d = driver()
    cluster(d).active = {"app": "web"}  # it would select both versions

    record = d.tick()

    assert record.decision.state.phase == "blocked"
    (paused,) = record.decision.transitions
    assert "the active Service web must select the stable's version by the 'version' label" in (
        paused.message
    )
    assert record.decision.desired == Desired()
    # Nothing was switched or scaled for it, so an abort has nothing to undo.
    stable = d.cluster.stable.replicas
    aborted = d.tick("abort")
    assert aborted.decision.state.phase == "rolledBack"
    assert aborted.decision.desired == Desired(canary_replicas=0)
    assert d.cluster.stable.replicas == stable
    assert cluster(d).active == {"app": "web"}


def test_live_window_is_the_step_after_the_switch_of_a_blue_green_rollout_only() -> None:
    assert not live_window(blue_green(), RolloutState(phase="progressing", step=0))
    assert live_window(blue_green(), RolloutState(phase="progressing", step=1))
    assert not live_window(make_rollout(), RolloutState(phase="progressing", step=1))


def test_a_canary_rollout_never_asks_for_a_selector() -> None:
    d = Driver(make_rollout(), FakeCluster.create(TOTAL))
    d.cluster.release(V2_IMAGE)
    d.run_until(phase_is("succeeded"))
    assert all(
        r.decision.desired.active_selector is None and r.decision.desired.preview_selector is None
        for r in d.history
    )


def test_decide_is_pure_on_a_blue_green_observation() -> None:
    d = driver()
    obs = cluster(d).observe()
    first = decide(d.rollout, RolloutState(), obs, d.now)
    assert decide(d.rollout, RolloutState(), obs, d.now) == first
    assert first.desired.preview_selector == {"app": "web", "version": "v2"}
