"""What brings a rollout's tick forward between its interval's ticks.

A decision that waits on the cluster (the step's canary pods Ready, the
stable rolled out at promotion or back at a rollback) asks to look again
soon (:data:`autocanary.rollout.decision.POLL`). Where the daemon watches the
rollout's Deployments, the change it waits for arrives as a watch event, a
fraction of a second after it happens: polling every two seconds on top
costs a tick per waiting rollout every two seconds for nothing (a wave of a
thousand releases is five hundred ticks a second) and reacts later. So there
the watch wakes it, and the poll becomes a slow fallback
(:data:`WATCHED_POLL`) for what no Deployment's status shows: a canary pod
failing, the progress deadline. Blue/green and gateway rollouts also wait on
Services and HTTPRoutes, which are not watched, and keep the short poll;
so do notices still to be told (their retries are timed).
"""

from __future__ import annotations

from datetime import timedelta

from autocanary.adapters.kubernetes import DeploymentRecord
from autocanary.rollout.decision import POLL
from autocanary.rollout.state import COMMAND_ANNOTATION

#: How soon a rollout waiting on watched Deployments looks again without an event.
WATCHED_POLL = timedelta(seconds=10)


def _status(record: DeploymentRecord) -> tuple[int, ...]:
    """What the deployment controller reports that a waiting decision reads."""
    return (
        record.ready,
        record.available,
        record.updated,
        record.current,
        record.observed_generation,
    )


def worth_a_tick(
    old: DeploymentRecord | None, new: DeploymentRecord | None, *, in_flight: bool
) -> bool:
    """Whether a watched change of a rollout's Deployment may change its next decision.

    A Deployment created or deleted, a new template (a release), a command,
    a new replica count (a GitOps sync scaling a rolled-back canary up again);
    while a release is in flight, also its status (the pods it waits on).
    """
    if old is None or new is None:
        return True
    if (
        old.template != new.template
        or old.annotations.get(COMMAND_ANNOTATION) != new.annotations.get(COMMAND_ANNOTATION)
        or old.replicas != new.replicas
    ):
        return True
    return in_flight and _status(old) != _status(new)


def poll_after(requested: timedelta | None, *, watched: bool, pending: bool) -> timedelta | None:
    """How soon to tick again after a tick that asked for ``requested`` (None: at the interval).

    ``watched``: the rollout waits only on Deployments the daemon watches (the
    replica-ratio canary, its namespace listed); ``pending``: notices still to
    be told.
    """
    if requested != POLL or pending or not watched:
        return requested
    return WATCHED_POLL
