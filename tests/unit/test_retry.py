"""A failed tick's reaction is decided by the error's class: backoff for permanent errors only."""

from __future__ import annotations

from datetime import timedelta

import pytest

from autocanary.daemon import retry
from autocanary.daemon.retry import ErrorKind, backoff, kind_of
from autocanary.errors import (
    ConfigError,
    InvalidResource,
    KubernetesForbidden,
    KubernetesUnavailable,
    PrometheusUnavailable,
    QueryError,
    ResourceNotFound,
    StateConflict,
    StateCorrupt,
)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        # What retrying alone cannot fix: RBAC, a missing Deployment, a rejected request or query.
        (KubernetesForbidden("get deployments: forbidden (403)"), ErrorKind.PERMANENT),
        (ResourceNotFound("deployment shop/web-canary: not found"), ErrorKind.PERMANENT),
        (InvalidResource("patch: rejected by the API server (422)"), ErrorKind.PERMANENT),
        (QueryError("bad_data: parse error at char 5"), ErrorKind.PERMANENT),
        # What may pass on its own: the network, 5xx and 429, timeouts, a write race.
        (KubernetesUnavailable("API server answered 503"), ErrorKind.TRANSIENT),
        (PrometheusUnavailable("Prometheus timed out"), ErrorKind.TRANSIENT),
        (StateConflict("conflict (409)"), ErrorKind.TRANSIENT),
        # Neither: a corrupt state has its own Event and alert, and keeps the interval.
        (StateCorrupt("total: input should be a valid integer"), None),
        (ConfigError([]), None),
    ],
)
def test_the_class_of_an_error_decides_its_kind(error: Exception, kind: ErrorKind | None) -> None:
    assert kind_of(error) is kind


def test_backoff_doubles_from_30s_up_to_10m() -> None:
    second = timedelta(seconds=1)
    waits = [backoff(n, second) for n in range(1, 9)]
    assert waits == [
        timedelta(seconds=30),
        timedelta(seconds=60),
        timedelta(seconds=120),
        timedelta(seconds=240),
        timedelta(seconds=480),
        timedelta(minutes=10),
        timedelta(minutes=10),
        timedelta(minutes=10),
    ]
    assert backoff(10_000, second) == retry.MAX_BACKOFF


def test_backoff_is_never_shorter_than_the_rollouts_interval() -> None:
    assert backoff(1, timedelta(minutes=2)) == timedelta(minutes=2)
    assert backoff(3, timedelta(minutes=2)) == timedelta(minutes=2)
    assert backoff(4, timedelta(minutes=2)) == timedelta(minutes=4)
    assert backoff(1, timedelta(hours=1)) == timedelta(hours=1)


def test_backoff_counts_failures_from_one() -> None:
    with pytest.raises(ValueError, match="failures counts from 1, got 0"):
        backoff(0, timedelta(seconds=1))
