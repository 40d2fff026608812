"""The Kubernetes adapter: the only daemon module that talks to the API server.

Objects are read as plain JSON (``_preload_content=False``) so templates keep
their exact API shape for hashing and copying. Every call has a timeout, and
every ``ApiException`` or transport error is translated into autocanary's own
error types (see :mod:`autocanary.errors`), chained with ``from``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client import ApiException

from autocanary.adapters.deadline import DeadlineExceeded, DeadlineRunner
from autocanary.errors import (
    InvalidResource,
    KubeconfigError,
    KubernetesForbidden,
    KubernetesUnavailable,
    NotHolder,
    ResourceNotFound,
    StateConflict,
)
from autocanary.rollout.revision import JSON
from autocanary.rollout.state import (
    COMMAND_ANNOTATION,
    RELEASE_ANNOTATION,
    STATE_ANNOTATION,
    STATE_KEY,
    state_object_name,
)


@dataclass(frozen=True)
class Access:
    """One API permission: ``verb`` on ``resource`` (of ``group``) in ``namespace``."""

    verb: str
    resource: str
    group: str
    namespace: str
    name: str = ""

    def __str__(self) -> str:
        kind = f"{self.resource}.{self.group}" if self.group else self.resource
        named = f"/{self.name}" if self.name else ""
        return f"{self.verb} {kind} {self.namespace}{named}"


@dataclass(frozen=True)
class ResourceRule:
    """One rule of a SelfSubjectRulesReview: what it allows, as RBAC matches it.

    An empty ``resource_names`` allows every name; ``*`` in the other fields
    allows everything of that field (RBAC's own matching, without subresources).
    """

    verbs: frozenset[str]
    api_groups: frozenset[str]
    resources: frozenset[str]
    resource_names: frozenset[str] = frozenset()

    def grants(self, access: Access) -> bool:
        """Whether this rule alone allows ``access``."""
        return (
            bool({access.verb, "*"} & self.verbs)
            and bool({access.group, "*"} & self.api_groups)
            and bool({access.resource, "*"} & self.resources)
            and (not self.resource_names or access.name in self.resource_names)
        )

    @classmethod
    def from_json(cls, obj: JSON) -> ResourceRule:
        """Parse one ``status.resourceRules`` item."""
        return cls(
            verbs=frozenset(obj.get("verbs") or ()),
            api_groups=frozenset(obj.get("apiGroups") or ()),
            resources=frozenset(obj.get("resources") or ()),
            resource_names=frozenset(obj.get("resourceNames") or ()),
        )


_T = TypeVar("_T")

#: (connect, read) seconds for each socket operation of an API call.
TIMEOUT = (5.0, 15.0)
#: Wall-clock seconds for a whole API call: an API server (or proxy) trickling its
#: answer resets the per-read timeout with every byte, and must not hang a tick.
CALL_DEADLINE = 20.0
FIELD_MANAGER = "autocanary"
#: The Gateway API's group and the version of its HTTPRoute that autocanary reads and writes.
GATEWAY_GROUP = "gateway.networking.k8s.io"
GATEWAY_VERSION = "v1"
_MAX_EVENT_MESSAGE = 1024
#: Attempts at a state write whose resourceVersion went stale through status updates only.
_STATUS_RETRIES = 5


@dataclass(frozen=True)
class DeploymentRecord:
    """A Deployment as read: what the engine needs, plus the raw object."""

    name: str
    namespace: str
    uid: str
    resource_version: str
    generation: int
    template: JSON
    selector: dict[str, str]
    annotations: dict[str, str]
    replicas: int
    ready: int
    available: int
    updated: int
    current: int
    observed_generation: int
    raw: JSON
    #: Who last set spec.replicas (managedFields' manager) and when, if the API says.
    replicas_manager: str = ""
    replicas_set_at: datetime | None = None

    @property
    def observed(self) -> bool:
        """Whether the deployment controller has seen the latest spec."""
        return self.observed_generation >= self.generation

    @property
    def labels(self) -> dict[str, str]:
        """The Deployment's own labels (not its pods')."""
        labels = (self.raw.get("metadata") or {}).get("labels")
        return labels if isinstance(labels, dict) else {}

    @classmethod
    def from_json(cls, obj: JSON) -> DeploymentRecord:
        """Build from the API's JSON; :class:`InvalidResource` if it is not a usable Deployment."""
        try:
            meta, spec = obj["metadata"], obj["spec"]
            status = obj.get("status") or {}
            return cls(
                name=meta["name"],
                namespace=meta["namespace"],
                uid=meta.get("uid", ""),
                resource_version=meta["resourceVersion"],
                generation=int(meta.get("generation", 0)),
                template=spec["template"],
                selector=dict((spec.get("selector") or {}).get("matchLabels") or {}),
                annotations=dict(meta.get("annotations") or {}),
                replicas=int(spec.get("replicas", 1)),
                ready=int(status.get("readyReplicas", 0)),
                available=int(status.get("availableReplicas", 0)),
                updated=int(status.get("updatedReplicas", 0)),
                current=int(status.get("replicas", 0)),
                observed_generation=int(status.get("observedGeneration", 0)),
                raw=obj,
                **_replicas_owner(meta.get("managedFields") or []),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidResource(f"not a usable Deployment object (missing {e})") from e


@dataclass(frozen=True)
class ServiceRecord:
    """A Service as read: its selector and the resourceVersion a switch is guarded by."""

    name: str
    namespace: str
    uid: str
    resource_version: str
    selector: dict[str, str]

    @classmethod
    def from_json(cls, obj: JSON) -> ServiceRecord:
        """Build from the API's JSON; :class:`InvalidResource` if it is not a usable Service."""
        try:
            meta = obj["metadata"]
            selector = (obj.get("spec") or {}).get("selector") or {}
            return cls(
                name=meta["name"],
                namespace=meta["namespace"],
                uid=meta.get("uid", ""),
                resource_version=meta["resourceVersion"],
                selector={str(k): str(v) for k, v in selector.items()},
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise InvalidResource(f"not a usable Service object (missing {e})") from e


#: On the state ConfigMap: the last command consumed (see :func:`command_mark`).
CONSUMED_ANNOTATION = "autocanary.io/consumed-command"


def command_mark(canary: DeploymentRecord, command: str) -> str:
    """What identifies ``command`` as set on ``canary`` now: its uid, generation and a digest.

    Every change to a Deployment's annotations bumps its generation, so the
    same command set again later (after it was removed) has another mark.
    """
    digest = hashlib.sha256(command.encode("utf-8", "replace")).hexdigest()[:16]
    return f"{canary.uid}/{canary.generation}/{digest}"


StateSource = Literal["configmap", "annotation", "none"]


@dataclass(frozen=True)
class StoredState:
    """A rollout's state as stored, and what its next write is guarded by.

    ``source`` says where ``text`` came from: the state ConfigMap owned by
    the canary (always preferred), else the annotation of a daemon before it
    (``legacy``, moved into the ConfigMap by the next write), else nowhere.
    ``resource_version`` is the ConfigMap's when one exists ("" when the next
    write creates it), even one left by a deleted canary of the same name,
    which is never read but taken over.
    """

    namespace: str
    name: str  # the ConfigMap's
    canary: str
    text: str | None
    source: StateSource
    resource_version: str = ""
    legacy: str | None = None  # the state annotation still on the canary
    consumed: str = ""  # the mark of the last command consumed (see command_mark)

    @property
    def where(self) -> str:
        """Where the state was read from, for messages."""
        if self.source == "annotation":
            return f"the {STATE_ANNOTATION} annotation on Deployment {self.namespace}/{self.canary}"
        return f"ConfigMap {self.namespace}/{self.name}"

    @property
    def removal(self) -> str:
        """The kubectl command that removes the state, for messages."""
        if self.source == "annotation":
            return (
                f"kubectl annotate deployment -n {self.namespace} {self.canary} {STATE_ANNOTATION}-"
            )
        return f"kubectl delete configmap -n {self.namespace} {self.name}"


def _replicas_owner(managed: list[JSON]) -> dict[str, Any]:
    """Who last wrote spec.replicas (server-side field ownership), and when if it says.

    Writes through the scale subresource (``kubectl scale``) carry no time; if
    several entries own the field, the untimed or latest one set the value.
    """
    owners: list[tuple[datetime, str, datetime | None]] = []
    for entry in managed:
        fields_v1 = entry.get("fieldsV1") or {}
        if "f:replicas" not in (fields_v1.get("f:spec") or {}):
            continue
        try:
            at = datetime.fromisoformat(str(entry["time"]).replace("Z", "+00:00"))
        except (KeyError, ValueError):
            at = None
        owners.append((at or datetime.max.replace(tzinfo=UTC), str(entry.get("manager") or ""), at))
    if not owners:
        return {}
    _, manager, at = max(owners)
    return {"replicas_manager": manager, "replicas_set_at": at}


def _decided_on(record: DeploymentRecord) -> tuple[object, ...]:
    """What a decision about this Deployment depends on, besides its status."""
    spec = record.raw.get("spec") or {}
    return (
        record.annotations.get(STATE_ANNOTATION),
        record.annotations.get(RELEASE_ANNOTATION),
        record.annotations.get(COMMAND_ANNOTATION),
        spec.get("replicas"),
        spec.get("template"),
        spec.get("selector"),
    )


def _translate(e: ApiException, what: str) -> Exception:
    reason = _api_message(e)
    status = e.status or 0
    if status in (401, 403):
        return KubernetesForbidden(
            f"{what}: forbidden ({status}): {reason}. Check the daemon's Role/RoleBinding "
            "(deploy/rbac.yaml)"
        )
    if status == 404:
        return ResourceNotFound(f"{what}: not found: {reason}")
    if status == 409:
        return StateConflict(f"{what}: conflict, the object changed meanwhile: {reason}")
    if status in (400, 422):
        return InvalidResource(f"{what}: rejected by the API server ({status}): {reason}")
    return KubernetesUnavailable(f"{what}: API server answered {status}: {reason}")


def _api_message(e: ApiException) -> str:
    try:
        body = json.loads(e.body or "{}")
    except (TypeError, ValueError):
        return str(e.reason or e.body)
    return str(body.get("message") or e.reason)


@contextmanager
def _calling(what: str) -> Iterator[None]:
    try:
        yield
    except ApiException as e:
        raise _translate(e, what) from e
    except urllib3.exceptions.MaxRetryError as e:
        # The pool's wrapper names the URL and "max retries"; the reason is what matters.
        reason = str(e.reason).rpartition("connection: ")[2] or str(e.reason)
        raise KubernetesUnavailable(
            f"{what}: cannot reach the API server at {e.pool.scheme}://{e.pool.host}:"
            f"{e.pool.port}: {reason}"
        ) from e
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise KubernetesUnavailable(f"{what}: cannot reach the API server: {e}") from e
    except DeadlineExceeded as e:
        raise KubernetesUnavailable(f"{what}: the API server timed out: {e}") from e


#: Set around a rollout's tick (see :func:`fenced`).
_fence: ContextVar[Callable[[], float] | None] = ContextVar("autocanary_fence", default=None)
#: The client methods that change the cluster (every write the daemon makes is one of these).
_WRITES = ("create_namespaced_", "patch_namespaced_", "replace_namespaced_", "delete_namespaced_")


@contextmanager
def fenced(fence: Callable[[], float]) -> Iterator[None]:
    """Check ``fence`` before every write made in this context (this thread's tick).

    ``fence`` returns how many seconds a write may still take (until another
    replica could hold the Lease this one acts under) or raises
    :class:`NotHolder`; a write is then sent with at most that deadline, or not
    at all. Reads are never fenced.
    """
    token = _fence.set(fence)
    try:
        yield
    finally:
        _fence.reset(token)


def load_api_client(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """An ApiClient from a kubeconfig file, else in-cluster config, else ``$KUBECONFIG``.

    ``context`` picks a kubeconfig context (as ``kubectl --context``). A
    missing, unreadable or malformed kubeconfig, or an unknown context, is a
    :class:`KubeconfigError` saying which file and what to do.
    """
    loaded: client.ApiClient | None = None
    if not kubeconfig and not context:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            loaded = client.ApiClient()
        except config.ConfigException:
            pass  # not in a pod: the kubeconfig, as kubectl does
    if loaded is None:
        loaded = _client_from_kubeconfig(kubeconfig, context)
    # urllib3 would otherwise retry 3 times, making every call to a hung API server
    # cost 4x its timeout; a failed call is retried by the next tick instead. The
    # REST client is already built, so its pool manager's default is the one to set.
    loaded.rest_client.pool_manager.connection_pool_kw["retries"] = 0
    return loaded


def _client_from_kubeconfig(kubeconfig: str | None, context: str | None) -> client.ApiClient:
    files = kubeconfig or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    # KUBECONFIG may list several files; the first one that exists is used, as by kubectl.
    paths = [p for p in files.split(os.pathsep) if p]
    existing = [p for p in paths if Path(p).is_file()]
    if not existing:
        where = (
            "--kubeconfig" if kubeconfig else ("KUBECONFIG" if "KUBECONFIG" in os.environ else "")
        )
        named = f" ({where})" if where else ""
        raise KubeconfigError(
            f"no kubeconfig: {', '.join(paths)}{named} does not exist and this is not a pod "
            "in a cluster; pass --kubeconfig FILE or set KUBECONFIG"
        )
    path = existing[0]
    try:
        loaded: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=path, context=context
        )
    except config.ConfigException as e:
        if context and "contexts list" in str(e):
            raise KubeconfigError(f"kubeconfig {path} has no context {context!r}") from e
        raise KubeconfigError(f"kubeconfig {path}: {_one_line(str(e))}") from e
    except yaml.YAMLError as e:
        raise KubeconfigError(f"kubeconfig {path} is not valid YAML: {_one_line(str(e))}") from e
    except OSError as e:
        raise KubeconfigError(f"kubeconfig {path}: {e.strerror}: {e.filename}") from e
    except (TypeError, AttributeError, KeyError, ValueError) as e:
        # The client library walks the file's structure without checking it.
        raise KubeconfigError(
            f"kubeconfig {path} is malformed ({type(e).__name__}: {_one_line(str(e))}); "
            "check it with 'kubectl config view'"
        ) from e
    return loaded


def _one_line(text: str) -> str:
    return " ".join(text.split())


#: Label on the canary Deployment mirroring its rollout's phase, for
#: ``kubectl get deploy -L autocanary.io/phase``.
PHASE_LABEL = "autocanary.io/phase"
#: Labels of the daemon's Deployment, by which the CLI finds its config.
DAEMON_SELECTOR = "app.kubernetes.io/name=autocanary,app.kubernetes.io/component=daemon"


def event_name(deployment: str, key: str) -> str:
    """The Event name for a notice ``key`` about ``deployment``: a valid, stable object name."""
    safe = re.sub(r"[^a-z0-9.-]+", "-", key.lower()).strip(".-")
    return f"{deployment}.{safe}"[:253].rstrip(".-")


def stored_state(canary: DeploymentRecord, found: JSON | None) -> StoredState:
    """The state of the rollout whose canary is ``canary``, from its ConfigMap ``found`` (if any).

    See :meth:`KubeClient.read_state`; the daemon's watch cache reads through
    this too, with the ConfigMap it keeps.
    """
    ns, name = canary.namespace, state_object_name(canary.name)
    legacy = canary.annotations.get(STATE_ANNOTATION)
    stored = StoredState(ns, name, canary.name, None, "none", legacy=legacy)
    if found is not None:
        meta = found.get("metadata") or {}
        stored = dataclasses.replace(stored, resource_version=str(meta["resourceVersion"]))
        owners = meta.get("ownerReferences") or []
        if canary.uid and any(o.get("uid") == canary.uid for o in owners):
            data = found.get("data") or {}
            return dataclasses.replace(
                stored,
                text=data.get(STATE_KEY),
                source="configmap",
                consumed=str((meta.get("annotations") or {}).get(CONSUMED_ANNOTATION, "")),
            )
    if legacy is not None:
        return dataclasses.replace(stored, text=legacy, source="annotation")
    return stored


class KubeClient:
    """Deployments, Services, Events and Leases, as the daemon and CLI need them."""

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        identity: str = "autocanary",
        deadline: float = CALL_DEADLINE,
    ) -> None:
        """Wrap an ApiClient; ``identity`` names this process in Events and Leases.

        ``deadline`` bounds each call in wall-clock seconds (see :data:`CALL_DEADLINE`).
        """
        self.api_client = api_client
        self.identity = identity
        self.deadline = deadline
        self._runner = DeadlineRunner("kube")
        self._apps = client.AppsV1Api(api_client)
        self._core = client.CoreV1Api(api_client)
        self._coordination = client.CoordinationV1Api(api_client)
        self._authorization = client.AuthorizationV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        #: Told the API call's name (``read_namespaced_deployment``) for each request.
        self.on_request: Callable[[str], None] | None = None
        #: Told each Deployment a write returned (a watch cache keeps it at once).
        self.on_written: Callable[[DeploymentRecord], None] | None = None
        #: Told each state ConfigMap a write returned, as JSON (likewise).
        self.on_state_written: Callable[[JSON], None] | None = None

    def _json(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> JSON:
        if self.on_request is not None:
            self.on_request(getattr(call, "__name__", "call"))

        def whole_call() -> JSON:
            response = call(*args, _preload_content=False, _request_timeout=TIMEOUT, **kwargs)
            data: JSON = json.loads(response.data)
            return data

        deadline = self.deadline
        fence = _fence.get()
        if fence is not None and getattr(call, "__name__", "").startswith(_WRITES):
            left = fence()
            if left <= 0:
                raise NotHolder(f"{what}: not sent, this replica no longer holds the Lease")
            deadline = min(deadline, left)
        with _calling(what):
            return self._runner.call(whole_call, deadline)

    # ---- Deployments -----------------------------------------------------------------------

    def read_deployment(self, namespace: str, name: str) -> DeploymentRecord:
        """Read one Deployment."""
        obj = self._json(
            f"read Deployment {namespace}/{name}",
            self._apps.read_namespaced_deployment,
            name,
            namespace,
        )
        return DeploymentRecord.from_json(obj)

    def list_deployments(self, namespace: str | None, label_selector: str) -> list[JSON]:
        """The Deployments carrying ``label_selector`` in ``namespace`` (None: every namespace)."""
        where = f"in {namespace}" if namespace else "in every namespace"
        what = f"list Deployments {label_selector} {where}"
        if namespace:
            data = self._json(
                what,
                self._apps.list_namespaced_deployment,
                namespace,
                label_selector=label_selector,
            )
        else:
            data = self._json(
                what, self._apps.list_deployment_for_all_namespaces, label_selector=label_selector
            )
        items: list[JSON] = data.get("items", [])
        return items

    def patch_deployment(
        self, namespace: str, name: str, patch: JSON | list[JSON], what: str
    ) -> DeploymentRecord:
        """Apply a merge patch (a dict) or JSON patch (a list) to a Deployment."""
        content_type = (
            "application/json-patch+json"
            if isinstance(patch, list)
            else "application/merge-patch+json"
        )
        obj = self._json(
            f"{what} ({namespace}/{name})",
            self._apps.patch_namespaced_deployment,
            name,
            namespace,
            patch,
            field_manager=FIELD_MANAGER,
            _content_type=content_type,
        )
        record = DeploymentRecord.from_json(obj)
        if self.on_written is not None:
            self.on_written(record)
        return record

    def scale(self, namespace: str, name: str, replicas: int) -> DeploymentRecord:
        """Set a Deployment's replica count."""
        return self.patch_deployment(
            namespace, name, {"spec": {"replicas": replicas}}, f"scale to {replicas}"
        )

    def replace_template(self, namespace: str, name: str, template: JSON) -> DeploymentRecord:
        """Replace a Deployment's whole pod template (a merge patch would keep removed keys)."""
        return self.patch_deployment(
            namespace,
            name,
            [{"op": "replace", "path": "/spec/template", "value": template}],
            "replace pod template",
        )

    def write_record(
        self, stable: DeploymentRecord, record_json: str, *, replicas: int | None = None
    ) -> DeploymentRecord:
        """Write the stable's release record, failing if another writer changed what was decided on.

        The write is guarded by the resourceVersion that was read. The
        deployment controller bumps it with every status update (pods getting
        Ready), so on a conflict the object is read again: if only its status
        moved, the write is retried on the new version; if the record or the
        spec changed (another replica, a new release) it fails with
        :class:`StateConflict` and the tick decides again. The stable's replica
        count can ride along in the same atomic patch.
        """
        current = stable
        for _ in range(_STATUS_RETRIES):
            patch: JSON = {
                "metadata": {
                    "resourceVersion": current.resource_version,
                    "annotations": {RELEASE_ANNOTATION: record_json},
                }
            }
            if replicas is not None:
                patch["spec"] = {"replicas": replicas}
            try:
                return self.patch_deployment(
                    stable.namespace, stable.name, patch, "write the release record"
                )
            except StateConflict:
                current = self.read_deployment(stable.namespace, stable.name)
                if _decided_on(current) != _decided_on(stable):
                    raise
        raise StateConflict(
            f"write the release record ({stable.namespace}/{stable.name}): the status kept "
            f"changing through {_STATUS_RETRIES} attempts"
        )

    # ---- the rollout's state ---------------------------------------------------------------

    def read_state(self, canary: DeploymentRecord) -> StoredState:
        """The state of the rollout whose canary is ``canary``: its ConfigMap, else the annotation.

        The ConfigMap counts only if ``canary`` (this very object, by uid)
        owns it: one left by a deleted canary of the same name is stale and
        never read (the garbage collector deletes it; a write takes it over).
        When both the ConfigMap and the annotation of an older daemon are
        there, the ConfigMap wins: it was written last (see :meth:`save_state`).
        """
        ns, name = canary.namespace, state_object_name(canary.name)
        try:
            found: JSON | None = self._json(
                f"read the state ConfigMap {ns}/{name}",
                self._core.read_namespaced_config_map,
                name,
                ns,
            )
        except ResourceNotFound:
            found = None
        return stored_state(canary, found)

    def save_state(
        self,
        canary: DeploymentRecord,
        stored: StoredState,
        state_json: str,
        *,
        consumed: str | None = None,
    ) -> StoredState:
        """Write the state into its ConfigMap, owned by ``canary``, guarded by ``stored``'s version.

        Created when ``stored`` saw none (:class:`StateConflict` if another
        writer created it first), else replaced at the resourceVersion read
        (:class:`StateConflict` if anyone wrote it since, or deleted it). Only
        the daemon writes it, so a conflict always means the state changed: the
        tick decides again on a fresh read. ``consumed`` is the mark of a
        command consumed with this state (:func:`command_mark`); the last one
        is kept otherwise.
        """
        mark = stored.consumed if consumed is None else consumed
        metadata: JSON = {
            "name": stored.name,
            "namespace": stored.namespace,
            "labels": {"app.kubernetes.io/managed-by": "autocanary"},
            # Deleted with the canary, as the annotation was: the stable's release
            # record is what restores capacity when a canary goes mid-release.
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": canary.name,
                    "uid": canary.uid,
                }
            ],
        }
        if mark:
            metadata["annotations"] = {CONSUMED_ANNOTATION: mark}
        body: JSON = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata,
            "data": {STATE_KEY: state_json},
        }
        what = f"write the state ConfigMap {stored.namespace}/{stored.name}"
        if not stored.resource_version:
            written = self._json(
                what,
                self._core.create_namespaced_config_map,
                stored.namespace,
                body,
                field_manager=FIELD_MANAGER,
            )
        else:
            metadata["resourceVersion"] = stored.resource_version
            try:
                written = self._json(
                    what,
                    self._core.replace_namespaced_config_map,
                    stored.name,
                    stored.namespace,
                    body,
                    field_manager=FIELD_MANAGER,
                )
            except ResourceNotFound as e:
                raise StateConflict(f"{what}: it was deleted meanwhile") from e
        if self.on_state_written is not None:
            self.on_state_written(written)
        return dataclasses.replace(
            stored,
            text=state_json,
            source="configmap",
            resource_version=str(written["metadata"]["resourceVersion"]),
            consumed=mark,
        )

    def consume_command(self, canary: DeploymentRecord, command: str) -> bool:
        """Remove the command annotation as read on ``canary``; False if it was set again since.

        Guarded like the release record: a command set (again) after the read
        bumped the generation, and stays for the next tick.
        """
        return self._remove_annotation(
            canary,
            COMMAND_ANNOTATION,
            lambda now: (
                now.generation == canary.generation
                and now.annotations.get(COMMAND_ANNOTATION) == command
            ),
            "consume the command",
        )

    def drop_legacy_state(self, canary: DeploymentRecord, text: str) -> bool:
        """Remove an older daemon's state annotation from the canary, if it still reads ``text``.

        Called only once the ConfigMap holds the state, so that nothing is lost
        if the daemon dies in between. False when the annotation changed since
        it was read (it is removed on a later tick).
        """
        return self._remove_annotation(
            canary,
            STATE_ANNOTATION,
            lambda now: now.annotations.get(STATE_ANNOTATION) == text,
            f"remove the {STATE_ANNOTATION} annotation (moved to its ConfigMap)",
        )

    def _remove_annotation(
        self,
        read: DeploymentRecord,
        key: str,
        unchanged: Callable[[DeploymentRecord], bool],
        what: str,
    ) -> bool:
        """Remove annotation ``key`` at the resourceVersion read, while ``unchanged`` holds.

        A JSON patch ``test`` would compare the serialised strings, which the
        API server escapes differently (``<`` as ``\\u003c``): the guard is the
        resourceVersion, and on a conflict the object is read again and the
        removal retried only if ``unchanged`` still holds of it.
        """
        current = read
        for _ in range(_STATUS_RETRIES):
            if not unchanged(current):
                return False
            patch: JSON = {
                "metadata": {
                    "resourceVersion": current.resource_version,
                    "annotations": {key: None},
                }
            }
            try:
                self.patch_deployment(read.namespace, read.name, patch, what)
            except StateConflict:
                current = self.read_deployment(read.namespace, read.name)
                continue
            return True
        raise StateConflict(
            f"{what} ({read.namespace}/{read.name}): the status kept changing through "
            f"{_STATUS_RETRIES} attempts"
        )

    def label_phase(self, canary: DeploymentRecord, phase: str) -> DeploymentRecord:
        """Mirror the rollout's phase in the canary's :data:`PHASE_LABEL` (for kubectl users).

        A label write neither bumps the Deployment's generation nor reaches its
        ReplicaSets, unlike an annotation's.
        """
        return self.patch_deployment(
            canary.namespace,
            canary.name,
            {"metadata": {"labels": {PHASE_LABEL: phase}}},
            f"label the phase {phase}",
        )

    def set_command(self, namespace: str, name: str, command: str) -> None:
        """Ask the daemon to run a manual command on a rollout (consumed on its next tick)."""
        self.patch_deployment(
            namespace,
            name,
            {"metadata": {"annotations": {COMMAND_ANNOTATION: command}}},
            f"set command {command!r}",
        )

    def create_deployment(self, namespace: str, body: JSON) -> DeploymentRecord:
        """Create a Deployment (used by ``autocanary release`` when the canary is missing)."""
        obj = self._json(
            f"create Deployment {namespace}/{body['metadata']['name']}",
            self._apps.create_namespaced_deployment,
            namespace,
            body,
            field_manager=FIELD_MANAGER,
        )
        return DeploymentRecord.from_json(obj)

    def daemon_config(self, namespace: str) -> tuple[str, str]:
        """The config the daemon in ``namespace`` runs: (YAML text, where it was found).

        The daemon's Deployment (labels :data:`DAEMON_SELECTOR`) names the
        ConfigMap it mounts; that one is read, so an older generated ConfigMap
        left behind by kustomize is never taken for the live one.
        """
        what = f"find the autocanary daemon in namespace {namespace}"
        listed = self._json(
            what,
            self._apps.list_namespaced_deployment,
            namespace,
            label_selector=DAEMON_SELECTOR,
        )
        names = [
            volume["configMap"]["name"]
            for item in listed.get("items") or []
            for volume in (
                item.get("spec", {}).get("template", {}).get("spec", {}).get("volumes") or []
            )
            if (volume.get("configMap") or {}).get("name")
        ]
        if not names:
            raise ResourceNotFound(
                f"{what}: no Deployment labelled {DAEMON_SELECTOR} mounting a ConfigMap there; "
                "pass -c CONFIG, or --daemon-namespace where the daemon runs"
            )
        config_map = self._json(
            f"read ConfigMap {namespace}/{names[0]}",
            self._core.read_namespaced_config_map,
            names[0],
            namespace,
        )
        data = config_map.get("data") or {}
        key = "config.yaml" if "config.yaml" in data else next(iter(data), None)
        if key is None:
            raise InvalidResource(f"ConfigMap {namespace}/{names[0]} holds no config")
        return str(data[key]), f"configmap/{names[0]} ({namespace}) {key}"

    # ---- Events ----------------------------------------------------------------------------

    def record_event(
        self,
        deployment: DeploymentRecord,
        reason: str,
        message: str,
        *,
        warning: bool,
        key: str | None = None,
    ) -> bool:
        """Write a core/v1 Event about a Deployment (``kubectl describe`` shows it).

        With ``key`` the Event gets a name derived from it, so recording the same
        key twice (a retry after a crash) finds the first one: returns False
        then, True when this call created the Event.
        """
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        metadata = (
            {"name": event_name(deployment.name, key), "namespace": deployment.namespace}
            if key is not None
            else {"generateName": f"{deployment.name}.", "namespace": deployment.namespace}
        )
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": metadata,
            "involvedObject": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": deployment.name,
                "namespace": deployment.namespace,
                "uid": deployment.uid,
                "resourceVersion": deployment.resource_version,
            },
            "reason": reason,
            "message": message[:_MAX_EVENT_MESSAGE],
            "type": "Warning" if warning else "Normal",
            "source": {"component": "autocanary"},
            "reportingComponent": "autocanary.io/autocanary",
            "reportingInstance": self.identity,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self._json(
                f"record Event {reason} on {deployment.namespace}/{deployment.name}",
                self._core.create_namespaced_event,
                deployment.namespace,
                body,
            )
        except StateConflict:
            if key is None:
                raise
            return False  # 409 AlreadyExists: recorded before
        return True

    def list_events(self, namespace: str, name: str) -> list[JSON]:
        """Events about one object, oldest first."""
        data = self._json(
            f"list Events of {namespace}/{name}",
            self._core.list_namespaced_event,
            namespace,
            field_selector=f"involvedObject.name={name}",
        )
        items: list[JSON] = data.get("items", [])
        # resourceVersion orders creation; timestamps only have whole seconds.
        return sorted(items, key=lambda e: int(e["metadata"]["resourceVersion"]))

    # ---- Services --------------------------------------------------------------------------

    def read_service(self, namespace: str, name: str) -> ServiceRecord:
        """Read one Service (its selector decides which pods receive its traffic)."""
        obj = self._json(
            f"read Service {namespace}/{name}",
            self._core.read_namespaced_service,
            name,
            namespace,
        )
        return ServiceRecord.from_json(obj)

    def switch_selector(self, service: ServiceRecord, selector: dict[str, str]) -> ServiceRecord:
        """Replace a Service's whole selector in ONE write, guarded by the resourceVersion read.

        Blue/green's switch: the endpoint-slice controller sees the old selector
        or the new one, never a mixture, so the Service never selects pods of
        both versions. A merge patch would keep keys the new selector lacks, so
        those are deleted explicitly (``None``) in the same patch. If the
        Service changed since ``service`` was read (someone edited it, another
        replica switched it) the write fails with :class:`StateConflict` and
        the caller decides again on a fresh read.
        """
        if not selector:
            # An empty selector makes a Service select nothing through the slice
            # controller, i.e. take every user off it: never what a switch means.
            raise InvalidResource(
                f"switch Service {service.namespace}/{service.name}: refusing an empty selector"
            )
        merged: dict[str, str | None] = dict.fromkeys(service.selector.keys() - selector.keys())
        merged.update(selector)
        patch: JSON = {
            "metadata": {"resourceVersion": service.resource_version},
            "spec": {"selector": merged},
        }
        labels = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        obj = self._json(
            f"switch Service {service.namespace}/{service.name} to {labels}",
            self._core.patch_namespaced_service,
            service.name,
            service.namespace,
            patch,
            field_manager=FIELD_MANAGER,
            _content_type="application/merge-patch+json",
        )
        return ServiceRecord.from_json(obj)

    # ---- Gateway API -----------------------------------------------------------------------

    def read_httproute(self, namespace: str, name: str) -> JSON:
        """Read one Gateway API HTTPRoute as plain JSON."""
        return self._json(
            f"read HTTPRoute {namespace}/{name}",
            self._custom.get_namespaced_custom_object,
            GATEWAY_GROUP,
            GATEWAY_VERSION,
            namespace,
            "httproutes",
            name,
        )

    def write_route_rules(self, route: JSON, rules: list[JSON]) -> JSON:
        """Replace an HTTPRoute's whole list of rules in ONE write, guarded by its resourceVersion.

        The gateway sees the old rules or the new ones, never a mixture: both
        weights of a rule (and autocanary's A/B rule) change together. A merge
        patch replaces a list whole. If the route changed since ``route`` was
        read the write fails with :class:`StateConflict` and the caller
        decides again on a fresh read. Returns the route as written.
        """
        meta = route.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        patch: JSON = {
            "metadata": {"resourceVersion": meta.get("resourceVersion")},
            "spec": {"rules": rules},
        }
        return self._json(
            f"set the rules of HTTPRoute {namespace}/{name}",
            self._custom.patch_namespaced_custom_object,
            GATEWAY_GROUP,
            GATEWAY_VERSION,
            namespace,
            "httproutes",
            name,
            patch,
            field_manager=FIELD_MANAGER,
            _content_type="application/merge-patch+json",
        )

    # ---- RBAC ------------------------------------------------------------------------------

    def can_i(self, access: Access) -> bool:
        """Whether this process may do ``access`` (SelfSubjectAccessReview, kubectl auth can-i)."""
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {
                "resourceAttributes": {
                    "verb": access.verb,
                    "resource": access.resource,
                    "group": access.group,
                    "namespace": access.namespace,
                    **({"name": access.name} if access.name else {}),
                }
            },
        }
        review = self._json(
            f"review access {access}",
            self._authorization.create_self_subject_access_review,
            body,
        )
        return bool((review.get("status") or {}).get("allowed"))

    def rules_in(self, namespace: str) -> list[ResourceRule] | None:
        """What this process may do in ``namespace`` (SelfSubjectRulesReview, ``can-i --list``).

        None when the authorizers could not list every rule (``incomplete``: a
        webhook authorizer, say): then only :meth:`can_i` can tell.
        """
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectRulesReview",
            "spec": {"namespace": namespace},
        }
        review = self._json(
            f"review rules in {namespace}",
            self._authorization.create_self_subject_rules_review,
            body,
        )
        status = review.get("status") or {}
        if status.get("incomplete"):
            return None
        return [ResourceRule.from_json(rule) for rule in status.get("resourceRules") or []]

    # ---- Pods ------------------------------------------------------------------------------

    def list_pods(self, namespace: str, selector: dict[str, str]) -> list[JSON]:
        """The pods matching a Deployment's ``matchLabels`` selector, as JSON."""
        labels = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        data = self._json(
            f"list pods {labels} in {namespace}",
            self._core.list_namespaced_pod,
            namespace,
            label_selector=labels,
        )
        items: list[JSON] = data.get("items", [])
        return items

    # ---- Leases ----------------------------------------------------------------------------

    def read_lease(self, namespace: str, name: str) -> JSON | None:
        """The Lease object, or None when it does not exist yet."""
        try:
            return self._json(
                f"read Lease {namespace}/{name}",
                self._coordination.read_namespaced_lease,
                name,
                namespace,
            )
        except ResourceNotFound:
            return None

    def list_leases(self, namespace: str, label_selector: str) -> list[JSON]:
        """The Leases in ``namespace`` carrying ``label_selector``."""
        data = self._json(
            f"list Leases {label_selector} in {namespace}",
            self._coordination.list_namespaced_lease,
            namespace,
            label_selector=label_selector,
        )
        items: list[JSON] = data.get("items", [])
        return items

    def create_lease(self, namespace: str, body: JSON) -> JSON:
        """Create a Lease; :class:`StateConflict` if someone created it first."""
        return self._json(
            f"create Lease {namespace}/{body['metadata']['name']}",
            self._coordination.create_namespaced_lease,
            namespace,
            body,
        )

    def delete_lease(self, namespace: str, body: JSON) -> None:
        """Delete a Lease, only if it is still the version in ``body`` (else StateConflict)."""
        meta = body["metadata"]
        self._json(
            f"delete Lease {namespace}/{meta['name']}",
            self._coordination.delete_namespaced_lease,
            meta["name"],
            namespace,
            body={"preconditions": {"resourceVersion": meta["resourceVersion"]}},
        )

    def replace_lease(self, namespace: str, body: JSON) -> JSON:
        """Replace a Lease, guarded by the resourceVersion in ``body``."""
        name = body["metadata"]["name"]
        return self._json(
            f"update Lease {namespace}/{name}",
            self._coordination.replace_namespaced_lease,
            name,
            namespace,
            body,
        )
