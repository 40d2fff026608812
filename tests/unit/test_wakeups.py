"""What brings a rollout's tick forward: watched changes, and the poll where no watch serves."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from autocanary.adapters.kubernetes import DeploymentRecord
from autocanary.daemon.engine import NOTICE_POLL
from autocanary.daemon.wakeups import WATCHED_POLL, poll_after, worth_a_tick
from autocanary.rollout.decision import POLL
from autocanary.rollout.state import COMMAND_ANNOTATION


def deployment(**status: int) -> DeploymentRecord:
    return DeploymentRecord(
        name="web-canary",
        namespace="shop",
        uid="u",
        resource_version="1",
        generation=2,
        template={"metadata": {"labels": {"app": "web"}}, "spec": {"containers": []}},
        selector={"app": "web"},
        annotations={},
        replicas=1,
        ready=status.get("ready", 0),
        available=status.get("available", 0),
        updated=status.get("updated", 1),
        current=status.get("current", 1),
        observed_generation=status.get("observed_generation", 2),
        raw={},
    )


def test_a_pod_getting_ready_wakes_a_release_in_flight_only() -> None:
    waiting, ready = deployment(), deployment(ready=1, available=1)
    assert worth_a_tick(waiting, ready, in_flight=True)
    # Pods come and go under thousands of settled rollouts: none of them ticks for it.
    assert not worth_a_tick(waiting, ready, in_flight=False)


@pytest.mark.parametrize("in_flight", [True, False])
def test_a_template_a_command_a_scale_or_a_deployment_coming_or_going_always_wakes(
    in_flight: bool,
) -> None:
    old = deployment()
    released = dataclasses.replace(old, template={"metadata": {"labels": {"app": "v2"}}})
    commanded = dataclasses.replace(old, annotations={COMMAND_ANNOTATION: "abort"})
    scaled = dataclasses.replace(old, replicas=3)
    for new in (released, commanded, scaled):
        assert worth_a_tick(old, new, in_flight=in_flight)
    assert worth_a_tick(None, old, in_flight=in_flight)
    assert worth_a_tick(old, None, in_flight=in_flight)


def test_a_write_that_changes_nothing_a_decision_reads_wakes_nothing() -> None:
    old = deployment()
    relabelled = dataclasses.replace(old, resource_version="2", raw={"metadata": {"labels": {}}})
    assert not worth_a_tick(old, relabelled, in_flight=True)


def test_a_wait_on_watched_deployments_polls_slowly_as_a_fallback() -> None:
    assert poll_after(POLL, watched=True, pending=False) == WATCHED_POLL
    # No watch (a namespace not listed; Services or routes waited on): the short poll.
    assert poll_after(POLL, watched=False, pending=False) == POLL
    # Notices still to be told retry on their own clock.
    assert poll_after(NOTICE_POLL, watched=True, pending=True) == NOTICE_POLL


@pytest.mark.parametrize("requested", [None, timedelta(seconds=1), timedelta(seconds=30)])
def test_other_requests_are_kept(requested: timedelta | None) -> None:
    assert poll_after(requested, watched=True, pending=False) == requested
