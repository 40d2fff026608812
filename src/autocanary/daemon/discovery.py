"""Rollouts declared where their teams work: on the stable Deployment itself.

A Deployment labelled ``autocanary.io/rollout=true`` declares a rollout of
itself; its annotation ``autocanary.io/rollout`` holds the rollout's settings
(YAML or JSON, e.g. ``{analysis: {checks: [...]}}``), laid over the central
config's ``discovery.defaults``. The namespace and stable are the
Deployment's own; the name defaults to the Deployment's.

Why the Deployment and not a ConfigMap or a resource of our own: Flagger's
users declare a Canary next to the Deployment it targets, Argo's a Rollout
that references it (``workloadRef``); both keep the release's settings in the
same manifests, the same GitOps repository and the same pull request as the
workload. An annotation on the Deployment keeps exactly that, with no CRD to
install cluster-wide, no extra object to keep in step, and no extra RBAC for
the team (they already edit their Deployment). The label lets the API server
select the declaring Deployments, so a round is one filtered list per
namespace served, whatever else runs there.

A declaration is validated as the config file is, its problems located by
line in the annotation; an invalid one is skipped, logged, and told once as
a Warning Event (``InvalidRolloutDeclaration``) on its Deployment, while every
other rollout runs on. One whose name or Deployments are already another
rollout's is refused the same way: the config file's rollouts come first,
then declarations in namespace/name order.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from autocanary.adapters.kubernetes import DeploymentRecord, KubeClient
from autocanary.config.loader import parse_declaration
from autocanary.config.models import ROLLOUT_ANNOTATION, ROLLOUT_LABEL, Config, RolloutConfig
from autocanary.errors import AutocanaryError, ConfigError, InvalidResource

log = structlog.get_logger("autocanary.daemon.discovery")


class DeclaringDeployments(Protocol):
    """Where a round reads the Deployments of a namespace that carry a label (the cache)."""

    def labelled(self, namespace: str, label: str, value: str) -> list[DeploymentRecord] | None:
        """The Deployments with ``label`` = ``value``; None when they are not at hand."""


class DeclaringEverywhere(Protocol):
    """Where a round reads every namespace's declaring Deployments (a cluster-wide watch)."""

    def matching(self) -> list[DeploymentRecord] | None:
        """The Deployments labelled as declaring a rollout; None when they are not at hand."""


#: Event reasons on the declaring Deployment.
INVALID = "InvalidRolloutDeclaration"
DECLARED = "RolloutDeclared"


class Discovery:
    """Reads the declarations each round; tells each Deployment's owner what became of its own."""

    def __init__(
        self,
        kube: KubeClient,
        *,
        may_tell: Callable[[str, str], bool],
        cached: DeclaringDeployments | None = None,
        everywhere: DeclaringEverywhere | None = None,
    ) -> None:
        """``may_tell(namespace, deployment)``: whether this replica writes Events about it.

        Every replica reads every declaration (any of them may come to act on
        it); only the one acting on the Deployment's shard writes the Event.
        ``cached`` serves a round from the daemon's Deployment cache in the
        namespaces it has listed: with thousands of declarations, a list of
        them all every round would cost more than everything else the daemon
        does while idle. ``everywhere`` serves a round that searches every
        namespace (``discovery.namespaces`` empty) the same way.
        """
        self.kube = kube
        self._may_tell = may_tell
        self._cached = cached
        #: Serves a round that searches every namespace; the daemon sets it while one does.
        self.everywhere = everywhere
        self._told: set[str] = set()  # Event keys this replica recorded (or found recorded)
        self._queued: set[str] = set()  # Event keys waiting for the teller thread
        self._events: queue.SimpleQueue[_Told] = queue.SimpleQueue()
        self._teller: threading.Thread | None = None
        self._lock = threading.Lock()
        self._logged: set[str] = set()
        # (namespace, Deployment) -> (what it was parsed from, the rollout or the problems):
        # a declaration is parsed again only when it or the defaults change.
        self._parsed: dict[tuple[str, str], tuple[str, RolloutConfig | ConfigError]] = {}

    def find(self, config: Config) -> list[RolloutConfig]:
        """The valid declared rollouts, in namespace/name order, that clash with no other."""
        records: list[DeploymentRecord] = []
        served: list[str | None] = [*config.discovery.namespaces] or [None]
        for namespace in served:
            records += self._declaring(namespace)
        names = {r.name: f"rollout {r.name!r} of the config file" for r in config.rollouts}
        deployments: dict[tuple[str, str], str] = {}
        for r in config.rollouts:
            for deployment in (r.stable, r.canary_name):
                deployments[(r.namespace, deployment)] = f"rollout {r.name!r} of the config file"
        context = json.dumps(
            [config.discovery.defaults, [sink.name for sink in config.alerts.sinks]],
            sort_keys=True,
            default=str,
        )
        parsed: dict[tuple[str, str], tuple[str, RolloutConfig | ConfigError]] = {}
        found = []
        for record in sorted(records, key=lambda r: (r.namespace, r.name)):
            text = record.annotations.get(ROLLOUT_ANNOTATION, "")
            source = f"Deployment {record.namespace}/{record.name} annotation {ROLLOUT_ANNOTATION}"
            key = (record.namespace, record.name)
            known = self._parsed.get(key)
            if known is not None and known[0] == context + text:
                outcome = known[1]
            else:
                outcome = self._parse(config, record, text, source)
            parsed[key] = (context + text, outcome)
            if isinstance(outcome, ConfigError):
                self._reject(record, text, [str(p) for p in outcome.problems])
                continue
            rollout = outcome
            clash = _clash(rollout, names, deployments)
            if clash:
                self._reject(record, text, [f"{source}: {clash}"])
                continue
            names[rollout.name] = f"rollout {rollout.name!r} declared on {source}"
            for deployment in (rollout.stable, rollout.canary_name):
                deployments[(rollout.namespace, deployment)] = names[rollout.name]
            self._accept(record, text, rollout)
            found.append(rollout)
        self._parsed = parsed  # Deployments gone or unlabelled are forgotten
        return found

    def _declaring(self, namespace: str | None) -> list[DeploymentRecord]:
        """The Deployments labelled as declaring a rollout, from the cache if it has them."""
        if namespace is not None and self._cached is not None:
            cached = self._cached.labelled(namespace, ROLLOUT_LABEL, "true")
            if cached is not None:
                return cached
        if namespace is None and self.everywhere is not None:
            found = self.everywhere.matching()
            if found is not None:
                return found
        records = []
        for item in self.kube.list_deployments(namespace, f"{ROLLOUT_LABEL}=true"):
            try:
                records.append(DeploymentRecord.from_json(item))
            except InvalidResource as e:
                log.warning("unreadable Deployment skipped by discovery", error=str(e))
        return records

    @staticmethod
    def _parse(
        config: Config, record: DeploymentRecord, text: str, source: str
    ) -> RolloutConfig | ConfigError:
        try:
            return parse_declaration(
                text,
                source,
                namespace=record.namespace,
                deployment=record.name,
                defaults=config.discovery.defaults,
                sinks=[sink.name for sink in config.alerts.sinks],
            )
        except ConfigError as e:
            return e

    def _reject(self, record: DeploymentRecord, text: str, problems: list[str]) -> None:
        key = _key_of(INVALID, text, problems)
        if key not in self._logged:
            self._logged.add(key)
            log.error(
                "invalid rollout declaration skipped; the other rollouts run on",
                namespace=record.namespace,
                deployment=record.name,
                problems=problems,
            )
        message = "autocanary skips this rollout declaration: " + "; ".join(problems)
        self._tell(record, key, INVALID, message, warning=True)

    def _accept(self, record: DeploymentRecord, text: str, rollout: RolloutConfig) -> None:
        key = _key_of(DECLARED, text, [rollout.name])
        if key not in self._logged:
            self._logged.add(key)
            log.info(
                "rollout declared on its Deployment",
                rollout=rollout.name,
                namespace=rollout.namespace,
                deployment=record.name,
            )
        message = (
            f"autocanary runs rollout {rollout.name!r} declared here: canary "
            f"{rollout.canary_name}, {len(rollout.plan)} steps, interval "
            f"{rollout.interval.total_seconds():g}s"
        )
        self._tell(record, key, DECLARED, message, warning=False)

    def _tell(
        self, record: DeploymentRecord, key: str, reason: str, message: str, *, warning: bool
    ) -> None:
        """Have the Event written by the teller thread: a round must not wait for the API.

        Ten thousand declarations found at start-up are ten thousand Events; written in
        the round, they held back every rollout's first tick by minutes.
        """
        if not self._may_tell(record.namespace, record.name):
            return
        with self._lock:
            if key in self._told or key in self._queued:
                return
            self._queued.add(key)
            if self._teller is None:
                self._teller = threading.Thread(
                    target=self._write_events, name="declaration-events", daemon=True
                )
                self._teller.start()
        self._events.put(_Told(record, key, reason, message, warning))

    def _write_events(self) -> None:
        while True:
            told = self._events.get()
            try:
                # Keyed by the declaration's content: told once whichever replica tells it.
                self.kube.record_event(
                    told.record, told.reason, told.message, warning=told.warning, key=told.key
                )
                with self._lock:
                    self._told.add(told.key)
            except AutocanaryError as e:
                log.warning(
                    "could not record an Event about a rollout declaration",
                    namespace=told.record.namespace,
                    deployment=told.record.name,
                    error=str(e),
                )
            except Exception:  # the thread must outlive a bug: no declaration would be told
                log.exception("recording an Event about a rollout declaration failed")
            finally:
                with self._lock:
                    self._queued.discard(told.key)


@dataclass(frozen=True)
class _Told:
    """An Event to write about a declaring Deployment."""

    record: DeploymentRecord
    key: str
    reason: str
    message: str
    warning: bool


def _key_of(reason: str, text: str, details: list[str]) -> str:
    digest = hashlib.sha256("\n".join([text, *details]).encode()).hexdigest()[:12]
    return f"{reason.lower()}-{digest}"


def _clash(
    rollout: RolloutConfig, names: dict[str, str], deployments: dict[tuple[str, str], str]
) -> str | None:
    if rollout.name in names:
        return (
            f"the rollout name {rollout.name!r} is taken by {names[rollout.name]}; "
            "set another 'name' in the annotation"
        )
    for deployment in (rollout.stable, rollout.canary_name):
        owner = deployments.get((rollout.namespace, deployment))
        if owner is not None:
            return (
                f"Deployment {rollout.namespace}/{deployment} already belongs to {owner}: "
                "one Deployment belongs to one rollout"
            )
    return None
