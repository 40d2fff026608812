"""The exception tree of autocanary.

Every error a user can meet is one of these, with a message that says what
was wrong, where, and what to do. Adapters translate library exceptions at
the boundary (``raise ... from e``) so the engine reacts on the type alone::

    AutocanaryError
    ├── ConfigError                 bad configuration; carries every problem found
    ├── KubeconfigError             no usable kubeconfig (missing, malformed, unknown context)
    ├── StartupError                the daemon cannot start (e.g. its port is taken)
    ├── TransientError              worth retrying next tick (network, 5xx, 429, timeouts)
    │   ├── KubernetesUnavailable
    │   ├── PrometheusUnavailable
    │   ├── StateConflict           someone else wrote the rollout first (409)
    │   └── NotHolder               this replica no longer holds the rollout's Lease: no write
    ├── PermanentError              retrying will not help until someone acts
    │   ├── KubernetesForbidden     RBAC denies what the daemon needs (403)
    │   ├── ResourceNotFound        a configured Deployment does not exist (404)
    │   ├── InvalidResource         the API rejected our request (422) or an object is malformed
    │   └── QueryError              Prometheus rejected a query (bad PromQL)
    └── StateCorrupt                the state annotation cannot be read back

The class decides the daemon's reaction to a failed tick (see ``autocanary.daemon.retry``):
a transient error is retried at the rollout's next interval; a permanent one is
retried with exponential backoff and told as a metric and an Event.
"""

from __future__ import annotations

from dataclasses import dataclass


class AutocanaryError(Exception):
    """Base of every error autocanary raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a config file: where it is and what was expected."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        field = f" {self.path}:" if self.path else ""
        return f"{where}:{field} {self.message}"


class ConfigError(AutocanaryError):
    """A configuration is invalid; ``problems`` lists every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class KubeconfigError(AutocanaryError):
    """No usable way to reach the cluster: a missing or malformed kubeconfig, an unknown context."""


class StartupError(AutocanaryError):
    """The daemon cannot start serving, e.g. its listen address is taken."""


class TransientError(AutocanaryError):
    """A failure that may pass on its own; the rollout retries on its next tick."""


class KubernetesUnavailable(TransientError):
    """The Kubernetes API could not be reached or answered 5xx/429."""


class PrometheusUnavailable(TransientError):
    """Prometheus could not be reached, timed out, or answered 5xx."""


class StateConflict(TransientError):
    """The object changed since it was read (HTTP 409); re-read and decide again."""


class NotHolder(TransientError):
    """A write was refused before it was sent: this replica no longer holds the Lease it needs.

    Raised by the write fence (``autocanary.adapters.kubernetes.fenced``); the
    replica that holds the Lease now acts on the rollout.
    """


class PermanentError(AutocanaryError):
    """A failure that repeats until someone changes the cluster or the config."""


class KubernetesForbidden(PermanentError):
    """RBAC denies an operation the daemon needs."""


class ResourceNotFound(PermanentError):
    """A configured object does not exist."""


class InvalidResource(PermanentError):
    """The API rejected a request as invalid, or an object lacks what we need."""


class QueryError(PermanentError):
    """Prometheus rejected a query (syntax or evaluation error)."""


class StateCorrupt(AutocanaryError):
    """The state annotation on a canary Deployment cannot be parsed."""
