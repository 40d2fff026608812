"""Watch-fed caches of the Deployments, pods and state ConfigMaps in the rollouts' namespaces.

Reading two Deployments per rollout per tick made the daemon's API traffic
grow with its rollouts, idle or not. Instead one thread per namespace lists
the namespace's Deployments once and then follows a watch from that list's
resourceVersion, so reads are served from memory and the API server sends
only what changed. Pods are cached the same way (:class:`PodCache`), trimmed
to what the daemon reads of them, for the canary's health while a release
progresses and for the pod names analysis matches; so are the rollouts'
state ConfigMaps (:class:`StateCache`: every ConfigMap of the namespace is
watched, only those named as a state is are kept). Bookmarks keep the
resourceVersion fresh; a watch that ends (the server's timeout, a dropped
connection, an API server restart) is resumed from the last version seen;
one whose version has been compacted away (410 Gone) lists again, and
whatever changed meanwhile is reported as changed.

Writes still go to the API, guarded by the resourceVersion read; what a write
returns is remembered here at once (:meth:`DeploymentCache.remember`,
:meth:`StateCache.remember`), so the
next tick does not decide on the version before its own write. The watch
delivers the same version moments later and changes nothing.

A namespace whose objects may not be listed or watched (RBAC from before
the cache) is not cached: reads there fall back to the API (see
:meth:`DeploymentCache.read_deployment`, :meth:`PodCache.list_pods`,
:meth:`StateCache.read_state`), and
the list is tried again every :data:`FORBIDDEN_RETRY_SECONDS`. The cache
never raises into a tick.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Generic, Protocol, TypeVar

import structlog
import urllib3
from kubernetes import client, watch
from kubernetes.client import ApiException

from autocanary.adapters.kubernetes import (
    CONSUMED_ANNOTATION,
    DeploymentRecord,
    KubeClient,
    StoredState,
    stored_state,
)
from autocanary.errors import InvalidResource, ResourceNotFound
from autocanary.rollout.revision import JSON
from autocanary.rollout.state import STATE_KEY, STATE_OBJECT_SUFFIX, state_object_name

log = structlog.get_logger("autocanary.adapters.kube_watch")

#: A watch request ends after this long (the server closes it) and is resumed at once.
WATCH_SECONDS = 300
#: After a failed list or watch, wait this long before the next attempt.
RETRY_SECONDS = 5.0
#: A namespace the daemon may not list is asked again this often (a Role added later).
FORBIDDEN_RETRY_SECONDS = 60.0
#: (connect, read) timeouts: the list is one bounded call; a watch is quiet between
#: events and bookmarks, so its read timeout outlasts the request itself.
LIST_TIMEOUT = (5.0, 60.0)
WATCH_TIMEOUT = (5.0, WATCH_SECONDS + 30.0)


class _Versioned(Protocol):
    """What a cache keeps of an object: at least its identity and version."""

    @property
    def name(self) -> str: ...
    @property
    def uid(self) -> str: ...
    @property
    def resource_version(self) -> str: ...


_R = TypeVar("_R", bound=_Versioned)

#: Called with (namespace, name, before, after) when a Deployment appears, changes or
#: disappears (``None`` on the missing side). Not called for the first list.
OnChange = Callable[[str, str, DeploymentRecord | None, DeploymentRecord | None], None]
#: Called with the API call's name for each request the cache makes (for counting).
OnRequest = Callable[[str], None]


class _Gone(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


def _trimmed(obj: JSON) -> DeploymentRecord:
    """The record of a Deployment, keeping less of it in memory.

    managedFields are read once, for who set the replicas, and not kept: they
    are most of an object's size and nothing else reads them.
    """
    record = DeploymentRecord.from_json(obj)
    meta = {k: v for k, v in obj["metadata"].items() if k != "managedFields"}
    return replace(record, raw={**obj, "metadata": meta})


@dataclass(frozen=True)
class PodRecord:
    """A pod as the daemon reads it: identity, labels, the images and the status."""

    name: str
    namespace: str
    uid: str
    resource_version: str
    labels: dict[str, str]
    raw: JSON

    @classmethod
    def from_json(cls, obj: JSON) -> PodRecord:
        """Keep what :class:`~autocanary.rollout.pods.PodView` reads; drop the rest."""
        try:
            meta = obj["metadata"]
            kept_meta = {
                k: meta[k]
                for k in (
                    "name",
                    "namespace",
                    "uid",
                    "resourceVersion",
                    "labels",
                    "deletionTimestamp",
                )
                if k in meta
            }
            spec = obj.get("spec") or {}
            containers = [
                {"name": c.get("name"), "image": c.get("image")}
                for c in spec.get("containers") or []
            ]
            status = obj.get("status") or {}
            kept_status = {
                k: status[k]
                for k in ("phase", "conditions", "containerStatuses", "initContainerStatuses")
                if k in status
            }
            return cls(
                name=meta["name"],
                namespace=meta["namespace"],
                uid=meta.get("uid", ""),
                resource_version=meta["resourceVersion"],
                labels=dict(meta.get("labels") or {}),
                raw={
                    "metadata": kept_meta,
                    "spec": {"containers": containers},
                    "status": kept_status,
                },
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise InvalidResource(f"not a usable Pod object (missing {e})") from e


def _newer(a: _Versioned, b: _Versioned) -> bool:
    """Whether ``a`` is a later version of the object than ``b``.

    resourceVersions are etcd revisions on every API server there is; should
    one not be a number, the later arrival wins.
    """
    if a.uid != b.uid:
        return True
    try:
        return int(a.resource_version) > int(b.resource_version)
    except ValueError:
        return True


@dataclass
class _Namespace:
    """One namespace's Deployments and how far its watch has got."""

    name: str
    synced: bool = False
    forbidden: bool = False
    resource_version: str = ""
    relists: int = 0


class _WatchCache(Generic[_R]):
    """Objects of one kind in some namespaces, kept current by list+watch (module docstring)."""

    #: The kind's plural, in log lines and API call names.
    plural = ""

    def __init__(
        self,
        kube: KubeClient,
        namespaces: Iterable[str],
        *,
        on_request: OnRequest | None = None,
    ) -> None:
        """Prepare the cache; :meth:`start` begins listing and watching."""
        self._kube = kube
        self._on_request = on_request
        self._lock = threading.Lock()
        self._objects: dict[str, dict[str, _R]] = {}  # namespace -> name -> object
        self._namespaces: dict[str, _Namespace] = {}
        self._add(namespaces)
        self._stop = threading.Event()
        self._watches: dict[str, watch.Watch] = {}
        self._threads: list[threading.Thread] = []
        self._started = False

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start one list+watch thread per namespace."""
        self._started = True
        for namespace in list(self._namespaces):
            self._start(namespace)

    def _start(self, namespace: str) -> None:
        thread = threading.Thread(
            target=self._follow,
            args=(namespace,),
            name=f"watch-{self.plural}-{namespace}",
            daemon=True,
        )
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        """Stop the watches and close the cache's connections."""
        self._stop.set()
        with self._lock:
            watches = list(self._watches.values())
        for w in watches:
            w.stop()  # type: ignore[no-untyped-call]  # untyped in kubernetes
        # Five seconds for them all (a list in flight may take longer; its thread is a
        # daemon thread and ends with the process).
        deadline = time.monotonic() + 5.0
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def _add(self, namespaces: Iterable[str]) -> list[str]:
        added = sorted(set(namespaces) - self._namespaces.keys())
        with self._lock:
            for namespace in added:
                self._namespaces[namespace] = _Namespace(namespace)
        # Each watch holds one of the client's pooled connections for minutes: room for
        # them besides the ticks' calls (a pool not created yet takes the new size).
        pools = self._kube.api_client.rest_client.pool_manager.connection_pool_kw
        pools["maxsize"] = int(pools.get("maxsize") or 1) + len(added)
        return added

    def watch(self, namespaces: Iterable[str]) -> None:
        """Also cache ``namespaces`` (a reloaded config's new ones), once started."""
        # Started with none (rollouts only declared, found in any namespace), the first
        # namespace starts its thread here as every later one does.
        for namespace in self._add(namespaces):
            if self._started:
                self._start(namespace)

    def wait_synced(self, timeout: float) -> bool:
        """Wait until every namespace is listed (or found forbidden); whether they are."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if all(n.synced or n.forbidden for n in self._namespaces.values()):
                    return True
            if self._stop.wait(0.05):
                return False
        return False

    # ---- reading ---------------------------------------------------------------------------

    def synced(self, namespace: str) -> bool:
        """Whether reads in ``namespace`` are served from the cache."""
        with self._lock:
            ns = self._namespaces.get(namespace)
            return ns is not None and ns.synced

    def relists(self, namespace: str) -> int:
        """How often ``namespace`` was listed again after its watch expired (410 Gone)."""
        with self._lock:
            return self._namespaces[namespace].relists

    # ---- the watch threads -----------------------------------------------------------------

    def _counted(self, call: str) -> None:
        if self._on_request is not None:
            self._on_request(call)

    def _follow(self, namespace: str) -> None:
        ns = self._namespaces[namespace]
        while not self._stop.is_set():
            try:
                if not ns.resource_version:
                    self._list(ns)
                self._watch(ns)
            except _Gone:
                log.info("watch expired; listing again", namespace=namespace)
                with self._lock:
                    ns.resource_version = ""
                    ns.relists += 1
            except ApiException as e:
                if e.status in (401, 403):
                    if not ns.forbidden:
                        log.warning(
                            f"may not list and watch {self.plural}; reading them each time "
                            f"instead (grant list and watch on {self.plural} to cache them)",
                            namespace=namespace,
                            status=e.status,
                        )
                    with self._lock:
                        ns.forbidden, ns.synced, ns.resource_version = True, False, ""
                    self._stop.wait(FORBIDDEN_RETRY_SECONDS)
                    continue
                log.info("watch failed; retrying", namespace=namespace, status=e.status)
                self._stop.wait(RETRY_SECONDS)
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
                # A dropped connection or a restarting API server: resume from the last
                # version seen (the cache keeps serving what it has meanwhile).
                if not self._stop.is_set():
                    log.info("watch interrupted; resuming", namespace=namespace, error=str(e))
                    self._stop.wait(RETRY_SECONDS)
            except Exception:  # the thread must outlive a bug: the cache would go stale
                if not self._stop.is_set():
                    log.exception("watch failed unexpectedly; retrying", namespace=namespace)
                    self._stop.wait(RETRY_SECONDS)

    def _list_call(self) -> Callable[..., Any]:
        raise NotImplementedError

    def _make(self, obj: JSON) -> _R:
        raise NotImplementedError

    def _key(self, record: _R) -> str:
        """What ``record`` is kept under within its namespace's objects."""
        return record.name

    def _changed(self, namespace: str, old: _R | None, new: _R | None) -> None:
        """Told each change the watch (or a list after 410) found; nothing by default."""

    def _keep_written(self, namespace: str, record: _R) -> None:
        """Keep ``record``, which a write returned, unless the watch has a later version already.

        Only in a namespace already listed: before that, reads go to the API anyway.
        """
        with self._lock:
            ns = self._namespaces.get(namespace)
            if ns is None or not ns.synced:
                return
            objects = self._objects.setdefault(namespace, {})
            known = objects.get(self._key(record))
            if known is None or _newer(record, known):
                objects[self._key(record)] = record

    def _list(self, ns: _Namespace) -> None:
        call = self._list_call()
        self._counted(call.__name__)
        response: Any = call(ns.name, _preload_content=False, _request_timeout=LIST_TIMEOUT)
        listed = json.loads(response.data)
        objects: dict[str, _R] = {}
        for obj in listed.get("items") or []:
            # A List's items carry no kind; the records do not need it.
            with contextlib.suppress(InvalidResource):
                record = self._make(obj)
                objects[self._key(record)] = record
        changes: list[tuple[_R | None, _R | None]] = []
        with self._lock:
            before = self._objects.get(ns.name, {})
            self._objects[ns.name] = objects
            first = not ns.synced and not ns.relists
            ns.synced, ns.forbidden = True, False
            ns.resource_version = listed["metadata"]["resourceVersion"]
        if first:
            return  # the first ticks read everything anyway
        for name in before.keys() | objects.keys():
            old, new = before.get(name), objects.get(name)
            if old is None or new is None or old.resource_version != new.resource_version:
                changes.append((old, new))
        for old, new in changes:
            self._changed(ns.name, old, new)

    def _watch(self, ns: _Namespace) -> None:
        # Events stay plain JSON (return type object): no model objects are built.
        w = watch.Watch(return_type=object)  # type: ignore[no-untyped-call]
        with self._lock:
            self._watches[ns.name] = w
        call = self._list_call()
        self._counted(call.__name__.replace("list_", "watch_", 1))
        try:
            for event in w.stream(  # type: ignore[no-untyped-call]
                call,
                ns.name,
                resource_version=ns.resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=WATCH_SECONDS,
                _request_timeout=WATCH_TIMEOUT,
            ):
                if self._stop.is_set():
                    return
                self._event(ns, event["type"], event["raw_object"])
        except ApiException as e:
            if e.status == 410:
                raise _Gone from e
            raise
        finally:
            with self._lock:
                self._watches.pop(ns.name, None)

    def _event(self, ns: _Namespace, kind: str, obj: JSON) -> None:
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind == "BOOKMARK":
            if version:
                with self._lock:
                    ns.resource_version = version
            return
        try:
            record = self._make(obj)
        except InvalidResource:
            return
        with self._lock:
            objects = self._objects.setdefault(ns.name, {})
            key = self._key(record)
            old = objects.get(key)
            if kind == "DELETED":
                objects.pop(key, None)
                new = None
            elif old is None or _newer(record, old):
                objects[key] = new = record
            else:
                new = old  # our own write, remembered already
            ns.resource_version = record.resource_version
        if new is not old:
            self._changed(ns.name, old, new)


class DeploymentCache(_WatchCache[DeploymentRecord]):
    """The Deployments of the rollouts' namespaces; see the module docstring."""

    plural = "deployments"

    def __init__(
        self,
        kube: KubeClient,
        namespaces: Iterable[str],
        *,
        on_change: OnChange | None = None,
        on_request: OnRequest | None = None,
    ) -> None:
        """Prepare the cache; :meth:`start` begins listing and watching.

        ``on_change`` is told each Deployment created, changed or deleted.
        """
        super().__init__(kube, namespaces, on_request=on_request)
        self._apps = client.AppsV1Api(kube.api_client)
        self._on_change = on_change

    def _list_call(self) -> Callable[..., Any]:
        return self._apps.list_namespaced_deployment

    def _make(self, obj: JSON) -> DeploymentRecord:
        return _trimmed(obj)

    def read_deployment(self, namespace: str, name: str) -> DeploymentRecord:
        """The Deployment from the cache, or from the API if its namespace is not cached.

        :class:`ResourceNotFound` when a cached namespace has no such Deployment.
        """
        with self._lock:
            ns = self._namespaces.get(namespace)
            if ns is not None and ns.synced:
                found = self._objects.get(namespace, {}).get(name)
                if found is not None:
                    return found
                # Worded as the API's 404 is, which a GET would have met.
                raise ResourceNotFound(
                    f"read Deployment {namespace}/{name}: not found: "
                    f'deployments.apps "{name}" not found'
                )
        return self._kube.read_deployment(namespace, name)

    def labelled(self, namespace: str, label: str, value: str) -> list[DeploymentRecord] | None:
        """The cached Deployments of ``namespace`` whose ``label`` is ``value``.

        None when the namespace is not listed yet (or may not be): ask the API then.
        """
        with self._lock:
            ns = self._namespaces.get(namespace)
            if ns is None or not ns.synced:
                return None
            records = list(self._objects.get(namespace, {}).values())
        return [r for r in records if r.labels.get(label) == value]

    def remember(self, record: DeploymentRecord) -> None:
        """Keep what a write returned, unless the watch has delivered a later version already."""
        self._keep_written(record.namespace, replace(record, raw=_trimmed(record.raw).raw))

    def _changed(
        self, namespace: str, old: DeploymentRecord | None, new: DeploymentRecord | None
    ) -> None:
        either = new if new is not None else old
        if self._on_change is None or either is None:
            return
        name = either.name
        try:
            self._on_change(namespace, name, old, new)
        except Exception:  # the watch must outlive a bug in a listener
            log.exception("change listener failed", namespace=namespace, deployment=name)


class DeclarationCache(_WatchCache[DeploymentRecord]):
    """The Deployments of every namespace that carry a label: discovery's, with no namespace named.

    One list and watch across the cluster, filtered by the API server on the
    label, so a discovery round reads memory: listing ten thousand declaring
    Deployments every round (ten seconds by default) cost the daemon and the API
    server more than everything else an idle fleet does. Kept under the one
    pseudo-namespace :data:`EVERYWHERE`, keyed by namespace and name.
    """

    plural = "deployments"
    #: The pseudo-namespace its one watch is kept (and logged) under.
    EVERYWHERE = "*"

    def __init__(
        self, kube: KubeClient, label_selector: str, *, on_request: OnRequest | None = None
    ) -> None:
        """Prepare the cache of the Deployments matching ``label_selector`` everywhere."""
        super().__init__(kube, [self.EVERYWHERE], on_request=on_request)
        self._apps = client.AppsV1Api(kube.api_client)
        self._selector = label_selector

    def _list_call(self) -> Callable[..., Any]:
        apps, selector = self._apps, self._selector

        # Called as a namespaced list is, with the pseudo-namespace first; named as the
        # API call it makes, which is how requests are counted.
        def list_deployment_for_all_namespaces(_everywhere: str, **kwargs: Any) -> Any:
            return apps.list_deployment_for_all_namespaces(label_selector=selector, **kwargs)

        return list_deployment_for_all_namespaces

    def _make(self, obj: JSON) -> DeploymentRecord:
        return _trimmed(obj)

    def _key(self, record: DeploymentRecord) -> str:
        return f"{record.namespace}/{record.name}"

    def matching(self) -> list[DeploymentRecord] | None:
        """Every matching Deployment; None until listed (or while it may not be): ask the API."""
        with self._lock:
            if not self._namespaces[self.EVERYWHERE].synced:
                return None
            return list(self._objects.get(self.EVERYWHERE, {}).values())


class PodCache(_WatchCache[PodRecord]):
    """The pods of the rollouts' namespaces, trimmed to what the daemon reads of them."""

    plural = "pods"

    def __init__(
        self, kube: KubeClient, namespaces: Iterable[str], *, on_request: OnRequest | None = None
    ) -> None:
        """Prepare the cache; :meth:`start` begins listing and watching."""
        super().__init__(kube, namespaces, on_request=on_request)
        self._core = client.CoreV1Api(kube.api_client)

    def _list_call(self) -> Callable[..., Any]:
        return self._core.list_namespaced_pod

    def _make(self, obj: JSON) -> PodRecord:
        return PodRecord.from_json(obj)

    def list_pods(self, namespace: str, selector: dict[str, str]) -> list[JSON]:
        """The pods matching ``selector`` (matchLabels), from the cache or else the API."""
        with self._lock:
            ns = self._namespaces.get(namespace)
            if ns is not None and ns.synced:
                return [
                    pod.raw
                    for pod in self._objects.get(namespace, {}).values()
                    if selector.items() <= pod.labels.items()
                ]
        return self._kube.list_pods(namespace, selector)


@dataclass(frozen=True)
class StateRecord:
    """A rollout's state ConfigMap, trimmed to what :func:`stored_state` reads of it."""

    name: str
    namespace: str
    uid: str
    resource_version: str
    raw: JSON

    @classmethod
    def from_json(cls, obj: JSON) -> StateRecord:
        """Keep a state ConfigMap's identity, owners, consumed mark and state; refuse others.

        :class:`InvalidResource` for a ConfigMap not named as a state is: the
        namespace's other ConfigMaps are not kept.
        """
        try:
            meta = obj["metadata"]
            if not str(meta["name"]).endswith(STATE_OBJECT_SUFFIX):
                raise InvalidResource(f"ConfigMap {meta['name']} holds no rollout's state")
            annotations = meta.get("annotations") or {}
            data = obj.get("data") or {}
            kept_meta: JSON = {
                k: meta[k]
                for k in ("name", "namespace", "uid", "resourceVersion", "ownerReferences")
                if k in meta
            }
            if CONSUMED_ANNOTATION in annotations:
                kept_meta["annotations"] = {CONSUMED_ANNOTATION: annotations[CONSUMED_ANNOTATION]}
            return cls(
                name=meta["name"],
                namespace=meta["namespace"],
                uid=meta.get("uid", ""),
                resource_version=meta["resourceVersion"],
                raw={
                    "metadata": kept_meta,
                    "data": {STATE_KEY: data[STATE_KEY]} if STATE_KEY in data else {},
                },
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise InvalidResource(f"not a usable ConfigMap object (missing {e})") from e


class StateCache(_WatchCache[StateRecord]):
    """The rollouts' state ConfigMaps; a tick reads its state here instead of with a GET.

    ConfigMaps cannot be listed by name, and the state's label could be
    removed by anyone (a state then unseen would be created again, and
    conflict for ever): every ConfigMap of the namespace is watched and only
    the state's are kept, by name.
    """

    plural = "configmaps"

    def __init__(
        self, kube: KubeClient, namespaces: Iterable[str], *, on_request: OnRequest | None = None
    ) -> None:
        """Prepare the cache; :meth:`start` begins listing and watching."""
        super().__init__(kube, namespaces, on_request=on_request)
        self._core = client.CoreV1Api(kube.api_client)

    def _list_call(self) -> Callable[..., Any]:
        return self._core.list_namespaced_config_map

    def _make(self, obj: JSON) -> StateRecord:
        return StateRecord.from_json(obj)

    def read_state(self, canary: DeploymentRecord) -> StoredState:
        """The state of ``canary``'s rollout from the cache, or from the API if not cached."""
        with self._lock:
            ns = self._namespaces.get(canary.namespace)
            if ns is not None and ns.synced:
                found = self._objects.get(canary.namespace, {}).get(state_object_name(canary.name))
                return stored_state(canary, found.raw if found is not None else None)
        return self._kube.read_state(canary)

    def remember(self, obj: JSON) -> None:
        """Keep a state ConfigMap a write returned, unless the watch has a later one already."""
        try:
            record = StateRecord.from_json(obj)
        except InvalidResource:
            return
        self._keep_written(record.namespace, record)
