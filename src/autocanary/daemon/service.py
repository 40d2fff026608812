"""The daemon: one APScheduler job per rollout, leader election or shards, reload, /metrics, probes.

The timer is kept apart from the work (as Flagger's job.go is): each job is a
thin wrapper around :meth:`RolloutEngine.tick`, never overlapping itself
(a guard per rollout) and running on a fixed pool of
``daemon.workers`` threads, however many rollouts there are. Each rollout
ticks at its own phase of its interval (:mod:`autocanary.daemon.schedule`), so
ticks are spread evenly instead of all firing at once; a watch event about a
rollout's Deployments (a new canary template, a command) brings its next tick
forward to within :data:`TRIGGER_DELAY`. A failing tick is logged and counted;
the job runs again on its next interval.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from autocanary.adapters.kube_watch import DeclarationCache, DeploymentCache, PodCache, StateCache
from autocanary.adapters.kubernetes import DeploymentRecord, KubeClient, fenced
from autocanary.adapters.leader import LeaderElector
from autocanary.adapters.notify import Notifier
from autocanary.adapters.prometheus import PrometheusClient
from autocanary.adapters.shards import ShardManager
from autocanary.config.loader import load_config
from autocanary.config.models import ROLLOUT_LABEL, Config, RolloutConfig
from autocanary.config.units import format_duration
from autocanary.daemon import retry, schedule, startup, wakeups
from autocanary.daemon.discovery import Discovery
from autocanary.daemon.engine import RolloutEngine, TickResult
from autocanary.daemon.metrics import DaemonMetrics
from autocanary.errors import (
    AutocanaryError,
    ConfigError,
    NotHolder,
    PermanentError,
    StartupError,
)
from autocanary.rollout.state import SETTLED_PHASES

log = structlog.get_logger("autocanary.daemon.service")

#: How often the config file is checked for changes (besides SIGHUP).
CONFIG_POLL_SECONDS = 2.0
#: The main loop must beat this often for /healthz to stay green.
HEARTBEAT_LIMIT_SECONDS = 30.0
#: A tick running longer than this (or three of its rollout's intervals, if
#: longer) turns /healthz red: every call it makes has a deadline, so a tick
#: this slow is stuck, and a restart is the way out.
TICK_LIMIT_SECONDS = 120.0
#: A watch event brings the rollout's tick forward to this long after it: the events
#: of one change (a template and the controller's status that follows) share one tick.
TRIGGER_DELAY = timedelta(milliseconds=200)
#: How long start-up waits for the watch cache's first lists before ticking anyway
#: (ticks read through the API for a namespace not listed yet).
CACHE_SYNC_SECONDS = 30.0
#: Pooled API connections beyond one per worker (Leases, discovery, Events).
POOL_SPARE = 8


def default_identity() -> str:
    """This replica's name in Leases and Events: the pod name in-cluster, else host and PID."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


class Daemon:
    """Runs every configured rollout until SIGTERM."""

    def __init__(
        self,
        config_path: Path,
        config: Config,
        kube: KubeClient,
        *,
        identity: str | None = None,
        metrics: DaemonMetrics | None = None,
    ) -> None:
        """Prepare (but do not start) a daemon for an already validated ``config``."""
        self.config_path = config_path
        self.config = config
        self.kube = kube
        self.identity = identity or default_identity()
        self.metrics = metrics or DaemonMetrics()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._heartbeat = time.monotonic()
        self._config_mtime = _mtime(config_path)
        self._engines: dict[str, RolloutEngine] = {}
        self._ticking: dict[str, float] = {}  # rollout -> monotonic start of its running tick
        self._permanent: dict[str, int] = {}  # rollout -> permanent errors in a row
        self._guards: dict[str, threading.Lock] = {}  # rollout -> held while it ticks
        self._again: set[str] = set()  # rollouts asked to tick while ticking
        self._due: dict[str, datetime] = {}  # rollout -> when its next tick is due
        self._in_flight: set[str] = set()  # rollouts whose last tick left a release under way
        # (namespace, Deployment) -> the rollouts whose stable or canary it is
        self._by_deployment: dict[tuple[str, str], set[str]] = {}
        kube.on_request = self._count_request
        # A pooled connection per worker, and a few for the Leases, discovery and Events;
        # the caches add one per watch. The client's default (5 per core) left the ticks
        # 10 beside 30 watches at 10,000 rollouts: in a wave of releases, every call past
        # them opened (and dropped) a TLS connection of its own.
        pools = kube.api_client.rest_client.pool_manager.connection_pool_kw
        pools["maxsize"] = max(int(pools.get("maxsize") or 1), config.daemon.workers + POOL_SPARE)
        self._cache = DeploymentCache(
            kube,
            _cached_namespaces(config),
            on_change=self._deployment_changed,
            on_request=self._count_request,
        )
        kube.on_written = self._cache.remember
        self._pods = PodCache(kube, _cached_namespaces(config), on_request=self._count_request)
        # The state's ConfigMaps likewise: a GET per rollout per tick otherwise.
        self._states = StateCache(kube, _cached_namespaces(config), on_request=self._count_request)
        kube.on_state_written = self._states.remember
        self._lock = threading.Lock()
        self._prometheus = PrometheusClient(config.prometheus)
        self._notifier = Notifier(config.alerts.sinks, metrics=self.metrics)
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=config.daemon.workers)},
            # Two instances, so a run that comes due while the last one finishes is not
            # dropped by APScheduler: the guard in _run_rollout turns it into a tick after.
            job_defaults={"coalesce": True, "max_instances": 2, "misfire_grace_time": None},
            timezone=UTC,
        )
        self._elector: LeaderElector | None = None
        self._shards: ShardManager | None = None
        election = config.daemon.leader_election
        self._lease_namespace: str | None = None
        if election.enabled and election.shards > 1:
            namespace = election.namespace or os.environ.get("POD_NAMESPACE") or "default"
            self._lease_namespace = namespace
            self._shards = ShardManager(
                kube,
                election,
                namespace,
                self.identity,
                busy=self._shard_busy,
                on_change=self._shards_changed,
            )
        elif election.enabled:
            namespace = election.namespace or os.environ.get("POD_NAMESPACE") or "default"
            self._lease_namespace = namespace
            self._elector = LeaderElector(
                kube,
                election,
                namespace,
                self.identity,
                on_change=lambda leading: self.metrics.is_leader.set(1 if leading else 0),
            )
        # Only while a round searches every namespace (discovery.namespaces empty).
        self._everywhere: DeclarationCache | None = None
        self._discovery = Discovery(kube, may_tell=self._may_tell, cached=self._cache)
        self._declared: list[RolloutConfig] = []  # found on their Deployments, valid
        self._discovered_at: float | None = None  # monotonic time of the last discovery round
        self._http: ThreadingHTTPServer | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; return the process exit code."""
        self._install_signals()
        self._start_http()
        self._check_requirements(self.config)
        self._cache.start()
        self._pods.start()
        self._states.start()
        deadline = time.monotonic() + CACHE_SYNC_SECONDS
        synced = all(
            cache.wait_synced(max(0.0, deadline - time.monotonic()))
            for cache in (self._cache, self._pods, self._states)
        )
        if not synced:
            log.warning("not everything listed yet; reading from the API meanwhile")
        self._discover()  # from the cache, now that it has listed the namespaces searched
        if self._elector is not None:
            self._elector.start()
        elif self._shards is not None:
            self._shards.start()
        else:
            self.metrics.is_leader.set(1)
        self._install_jobs(self._effective(self.config))
        self._scheduler.start()
        log.info(
            "daemon started",
            identity=self.identity,
            rollouts=[r.name for r in self.config.rollouts],
            declared=[r.name for r in self._declared],
            leader_election=self._elector is not None,
            shards=self._shards.shards if self._shards is not None else None,
            listen=self.config.daemon.listen,
        )
        while not self._stop.is_set():
            self._heartbeat = time.monotonic()
            self._watch_ticks()
            if self._reload.is_set() or self._config_changed():
                self._reload.clear()
                self.reload()
            elif self._discovery_due() and self._discover():
                self._install_jobs(self._effective(self.config), keep_unchanged=True)
            self._stop.wait(CONFIG_POLL_SECONDS)
        self.shutdown()
        return 0

    def request_stop(self) -> None:
        """Ask :meth:`run` to finish its current ticks and exit."""
        self._stop.set()

    def shutdown(self) -> None:
        """Finish running ticks, release the lease, flush alerts, stop serving."""
        log.info("shutting down: finishing current ticks")
        self._scheduler.shutdown(wait=True)
        self._cache.stop()
        self._pods.stop()
        self._states.stop()
        if self._everywhere is not None:
            self._everywhere.stop()
        if self._elector is not None:
            self._elector.stop(release=True)
        if self._shards is not None:
            self._shards.stop(release=True)
        self._notifier.close(timeout=10)
        self._prometheus.close()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        log.info("stopped")

    def _install_signals(self) -> None:
        def stop(signum: int, frame: FrameType | None) -> None:
            log.info("signal received", signal=signal.Signals(signum).name)
            self._stop.set()

        def hup(signum: int, frame: FrameType | None) -> None:
            self._reload.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)

    # ---- declared rollouts -------------------------------------------------------------------

    def _discovery_due(self) -> bool:
        discovery = self.config.discovery
        return discovery.enabled and (
            self._discovered_at is None
            or time.monotonic() - self._discovered_at >= discovery.interval.total_seconds()
        )

    def _watch_everywhere(self, wanted: bool) -> None:
        """Start the cluster-wide watch of declarations when rounds search every namespace.

        Stopped again when a reload names the namespaces (or turns discovery
        off): it would hold a connection and follow every labelled Deployment
        in the cluster for nothing.
        """
        if wanted and self._everywhere is None:
            everywhere = DeclarationCache(
                self.kube, f"{ROLLOUT_LABEL}=true", on_request=self._count_request
            )
            everywhere.start()
            self._everywhere = self._discovery.everywhere = everywhere
            if not everywhere.wait_synced(CACHE_SYNC_SECONDS):
                log.warning("declarations not listed yet; listing them each round meanwhile")
        elif not wanted and self._everywhere is not None:
            self._discovery.everywhere = None
            self._everywhere.stop()
            self._everywhere = None
            log.info("stopped watching declarations in every namespace")

    def _discover(self) -> bool:
        """Read the declared rollouts again; whether they changed (the jobs are then installed)."""
        self._watch_everywhere(
            self.config.discovery.enabled and not self.config.discovery.namespaces
        )
        if not self.config.discovery.enabled:
            changed = bool(self._declared)
            self._declared = []
            return changed
        self._discovered_at = time.monotonic()
        try:
            declared = self._discovery.find(self.config)
        except AutocanaryError as e:
            log.warning(
                "reading the rollout declarations failed; the ones found before run on",
                error=str(e),
            )
            return False
        if declared == self._declared:
            return False
        before = {r.name for r in self._declared}
        now = {r.name for r in declared}
        log.info(
            "declared rollouts changed",
            added=sorted(now - before),
            removed=sorted(before - now),
            changed=sorted(
                r.name for r in declared if r.name in before and r not in self._declared
            ),
        )
        self._declared = declared
        return True

    def _effective(self, config: Config) -> Config:
        """``config`` with the declared rollouts after its own."""
        if not self._declared:
            return config
        return config.model_copy(update={"rollouts": [*config.rollouts, *self._declared]})

    def _may_tell(self, namespace: str, name: str) -> bool:
        """Whether this replica writes Events about Deployment ``namespace/name``'s declaration."""
        if self._shards is not None:
            return self._shards.may_act(self._shards.shard_of(namespace, name))
        if self._elector is not None:
            return self._elector.is_leader()
        return True

    # ---- jobs ------------------------------------------------------------------------------

    def _install_jobs(self, config: Config, *, keep_unchanged: bool = False) -> None:
        """Schedule a job per rollout of ``config``; remove the jobs of rollouts gone.

        A reload schedules every job anew (each runs at once). A change among
        the declared rollouts, with ``keep_unchanged``, leaves the jobs of the
        rollouts whose settings are the same alone: one team's edit must not
        re-create ten thousand engines.
        """
        wanted = {r.name: r for r in config.rollouts}
        # A reloaded config's or a declared rollout's new namespace is cached too.
        namespaces = _cached_namespaces(config)
        self._cache.watch(namespaces)
        self._pods.watch(namespaces)
        self._states.watch(namespaces)
        engines = []
        with self._lock:
            for name in list(self._engines):
                gone = name not in wanted
                if gone or wanted[name].namespace != self._engines[name].rollout.namespace:
                    self.metrics.forget(name)
                if gone:
                    self._scheduler.remove_job(name)
                    del self._engines[name]
                    self._due.pop(name, None)
                    self._in_flight.discard(name)
                    self._guards.pop(name, None)
            self._by_deployment = {}
            for name, rollout in wanted.items():
                for deployment in (rollout.stable, rollout.canary_name):
                    key = (rollout.namespace, deployment)
                    self._by_deployment.setdefault(key, set()).add(name)
            fresh = {
                name: rollout
                for name, rollout in wanted.items()
                if not keep_unchanged
                or name not in self._engines
                or self._engines[name].rollout != rollout
            }
            now = datetime.now(UTC)
            for name, rollout in fresh.items():
                # Spread over the jobs scheduled now: one newly declared rollout starts at once.
                first = schedule.first_tick(name, rollout.interval, len(fresh), now)
                self._due[name] = first
                self._engines[name] = RolloutEngine(
                    rollout,
                    kube=self.kube,
                    prometheus=self._prometheus,
                    notifier=self._notifier,
                    metrics=self.metrics,
                    reads=self._cache,
                    pods=self._pods,
                    states=self._states,
                )
                engines.append(self._engines[name])
                self._scheduler.add_job(
                    self._run_rollout,
                    schedule.PhasedTrigger(name, rollout.interval),
                    args=[name],
                    id=name,
                    name=f"rollout {name}",
                    replace_existing=True,
                    next_run_time=first,
                )

        # Said at start-up (and reload), leader or not: the window each rollout's queries
        # use, and whether a configured one is too short for the scrape interval. In the
        # background: with thousands of rollouts, asking takes a while, and ticks must not wait.
        def say_windows() -> None:
            for engine in engines:
                engine.scrape_interval()

        threading.Thread(target=say_windows, name="analysis-windows", daemon=True).start()

    def _fence(self, rollout: RolloutConfig) -> Callable[[], float] | None:
        """The write fence of ``rollout``'s tick, or None when this replica must not act on it."""
        if self._shards is not None:
            shard = self._shards.shard_of(rollout.namespace, rollout.name)
            return self._shards.fence(shard) if self._shards.may_act(shard) else None
        if self._elector is not None:
            return self._elector.fence() if self._elector.is_leader() else None
        return lambda: math.inf  # the only replica: nothing to fence against

    def _shard_busy(self, shard: int) -> bool:
        """Whether a tick of one of ``shard``'s rollouts is running (it is not released then)."""
        assert self._shards is not None
        with self._lock:
            running = [self._engines[n].rollout for n in self._ticking if n in self._engines]
        return any(self._shards.shard_of(r.namespace, r.name) == shard for r in running)

    def _shards_changed(self, acting: list[int]) -> None:
        self.metrics.shards_held.set(len(acting))
        self.metrics.is_leader.set(1 if acting else 0)

    def _run_rollout(self, name: str) -> None:
        now = datetime.now(UTC)
        with self._lock:
            engine = self._engines.get(name)
            due = self._due.pop(name, None)
            if engine is not None:
                guard = self._guards.setdefault(name, threading.Lock())
                self._due[name] = schedule.next_tick(name, engine.rollout.interval, now)
        if due is not None:
            self.metrics.tick_lag.observe(max(0.0, (now - due).total_seconds()))
        if engine is None or self._stop.is_set():
            return
        fence = self._fence(engine.rollout)
        if fence is None:
            return
        if not guard.acquire(blocking=False):
            # Ticking already (a reload's new job, say): tick again once it is done, since
            # what asked for this tick may have come after that one read the cluster.
            with self._lock:
                self._again.add(name)
            return
        try:
            self._tick_once(engine, fence)
        finally:
            guard.release()
            with self._lock:
                again = name in self._again
                self._again.discard(name)
        if again:
            self.trigger(name)

    def _count_request(self, call: str) -> None:
        self.metrics.kube_requests.labels(call).inc()

    def _deployment_changed(
        self,
        namespace: str,
        name: str,
        old: DeploymentRecord | None,
        new: DeploymentRecord | None,
    ) -> None:
        """A watch saw a rollout's Deployment change: tick it soon if a decision may change.

        See :func:`wakeups.worth_a_tick`: status counts only while a release is
        in flight, so pods coming and going under settled rollouts wake none.
        """
        with self._lock:
            rollouts = set(self._by_deployment.get((namespace, name), ()))
            in_flight = rollouts & self._in_flight
        for rollout in rollouts:
            if wakeups.worth_a_tick(old, new, in_flight=rollout in in_flight):
                self.trigger(rollout)

    def trigger(self, name: str) -> None:
        """Tick ``name`` within :data:`TRIGGER_DELAY` (a watch saw its Deployments change)."""
        with self._lock:
            guard = self._guards.get(name)
            if guard is not None and guard.locked():
                self._again.add(name)
                return
        self._move(name, datetime.now(UTC) + TRIGGER_DELAY, earlier_only=True)

    def _move(self, name: str, when: datetime, *, earlier_only: bool) -> None:
        """Run the rollout's job next at ``when``; its phase stays for the runs after."""
        if self._stop.is_set():
            return
        job = self._scheduler.get_job(name)
        if job is None:
            return
        if earlier_only and job.next_run_time is not None and job.next_run_time <= when:
            return
        with self._lock:
            due = self._due.get(name)
            self._due[name] = min(due, when) if earlier_only and due is not None else when
        job.modify(next_run_time=when)

    def _tick_once(self, engine: RolloutEngine, fence: Callable[[], float]) -> None:
        name, rollout = engine.rollout.name, engine.rollout
        with self._lock:
            self._ticking[name] = time.monotonic()
        # The tick binds revision and step as it learns them; the failure line below
        # carries them too. Unbound afterwards: the pool's thread runs other rollouts.
        with structlog.contextvars.bound_contextvars(
            rollout=name, namespace=rollout.namespace, revision=None, step=None
        ):
            try:
                with fenced(fence):
                    result = engine.tick()
            except NotHolder as e:
                # The rollout's Lease was lost mid-tick; its new holder carries on.
                log.info("tick stopped: this replica no longer holds the rollout", error=str(e))
                return
            except AutocanaryError as e:
                with fenced(fence):  # a permanent error's Event is a write too
                    self._failed(engine, e)
                return
            except Exception as e:
                # A bug must not kill the job (and with it the rollout); it must be loud.
                self.metrics.tick_errors.labels(name, type(e).__name__).inc()
                log.exception("tick crashed")
                return
            finally:
                with self._lock:
                    self._ticking.pop(name, None)
                self.metrics.tick_running.labels(name).set(0)
        self._succeeded(rollout)
        with self._lock:
            if result.phase in SETTLED_PHASES:
                self._in_flight.discard(name)
            else:
                self._in_flight.add(name)
        if not self._settle(rollout, result):
            self._requeue(rollout, result)

    def _settle(self, rollout: RolloutConfig, result: TickResult) -> bool:
        """Tick a settled rollout next at ``daemon.settledResync``; whether it was put off.

        Only where the Deployments' watch runs: it wakes the rollout at once when
        they change (:meth:`_deployment_changed`). Elsewhere, and while notices
        wait or a release is in flight, the rollout ticks every interval.
        """
        resync = self.config.daemon.settled_resync
        if (
            result.phase not in SETTLED_PHASES
            or result.requeue_after is not None
            or resync <= rollout.interval
            or not self._cache.synced(rollout.namespace)
        ):
            return False
        self._postpone(rollout, resync)
        return True

    def _failed(self, engine: RolloutEngine, error: AutocanaryError) -> None:
        """Count and log a failed tick; a permanent error also backs off and is told."""
        rollout = engine.rollout
        name = rollout.name
        self.metrics.tick_errors.labels(name, type(error).__name__).inc()
        kind = retry.kind_of(error)
        for each in retry.ErrorKind:
            self.metrics.rollout_error.labels(name, rollout.namespace, each).set(
                1 if each is kind else 0
            )
        if not isinstance(error, PermanentError):
            self._permanent.pop(name, None)
            log.error("tick failed", error_type=type(error).__name__, error=str(error), kind=kind)
            return
        failures = self._permanent.get(name, 0) + 1
        self._permanent[name] = failures
        wait = retry.backoff(failures, rollout.interval)
        log.error(
            "tick failed",
            error_type=type(error).__name__,
            error=str(error),
            kind=kind,
            failures=failures,
            retry_in=format_duration(wait),
        )
        if failures == 1:
            engine.report_permanent(error)
        self._postpone(rollout, wait)

    def _succeeded(self, rollout: RolloutConfig) -> None:
        if self._permanent.pop(rollout.name, None) is not None:
            log.info("tick succeeded again after permanent errors", rollout=rollout.name)
        for each in retry.ErrorKind:
            self.metrics.rollout_error.labels(rollout.name, rollout.namespace, each).set(0)

    def _postpone(self, rollout: RolloutConfig, wait: timedelta) -> None:
        """Run the rollout's job next in ``wait`` (its phase times follow on from then)."""
        self._move(rollout.name, datetime.now(UTC) + wait, earlier_only=False)

    def _tick_limit(self, name: str) -> float:
        engine = self._engines.get(name)
        interval = engine.rollout.interval.total_seconds() if engine is not None else 0.0
        return max(TICK_LIMIT_SECONDS, 3 * interval)

    def stuck_ticks(self) -> dict[str, float]:
        """Rollouts whose running tick has passed its limit, with its age in seconds."""
        now = time.monotonic()
        with self._lock:
            return {
                name: now - since
                for name, since in self._ticking.items()
                if now - since > self._tick_limit(name)
            }

    def _watch_ticks(self) -> None:
        now = time.monotonic()
        with self._lock:
            running = dict(self._ticking)
        for name, since in running.items():
            self.metrics.tick_running.labels(name).set(now - since)
        for name, age in self.stuck_ticks().items():
            engine = self._engines.get(name)
            log.error(
                "tick stuck; /healthz reports it",
                rollout=name,
                namespace=engine.rollout.namespace if engine is not None else None,
                revision=None,  # known to the stuck tick's thread only
                step=None,
                running_s=round(age, 1),
                limit_s=self._tick_limit(name),
            )

    def _requeue(self, rollout: RolloutConfig, result: TickResult) -> None:
        watched = (
            rollout.blue_green is None
            and rollout.gateway is None
            and self._cache.synced(rollout.namespace)
        )
        after = wakeups.poll_after(
            result.requeue_after, watched=watched, pending=bool(result.state.pending)
        )
        if after is None or after >= rollout.interval:
            return
        when = datetime.now(UTC) + max(after, timedelta(milliseconds=200))
        self._move(rollout.name, when, earlier_only=True)

    # ---- reload ----------------------------------------------------------------------------

    def _config_changed(self) -> bool:
        mtime = _mtime(self.config_path)
        if mtime != self._config_mtime:
            self._config_mtime = mtime
            return True
        return False

    def reload(self) -> bool:
        """Load the config file again; keep the running config if the new one is invalid."""
        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            self.metrics.config_reloads.labels("rejected").inc()
            log.error(
                "new config rejected; the previous one keeps running",
                problems=[str(p) for p in e.problems],
            )
            return False
        if new == self.config:
            return True
        prometheus = None
        if new.prometheus != self.config.prometheus:
            try:
                prometheus = PrometheusClient(new.prometheus)  # reads bearerTokenFile now
            except AutocanaryError as e:
                self.metrics.config_reloads.labels("rejected").inc()
                log.error("new config rejected; the previous one keeps running", problems=[str(e)])
                return False
        if new.daemon != self.config.daemon:
            log.warning("the daemon section changed; it takes effect after a restart")
        if prometheus is not None:
            old = self._prometheus
            self._prometheus = prometheus
            old.close()
        if new.alerts != self.config.alerts:
            old_notifier = self._notifier
            self._notifier = Notifier(new.alerts.sinks, metrics=self.metrics)
            threading.Thread(target=old_notifier.close, kwargs={"timeout": 30}, daemon=True).start()
        self.config = new
        # Every job runs at once after a reload: a fix in the config is tried now,
        # and a permanent error's backoff starts over.
        self._permanent.clear()
        self._discover()  # the declarations again, over the new defaults
        self._install_jobs(self._effective(new))
        self._check_requirements(new)
        self.metrics.config_reloads.labels("applied").inc()
        log.info("config reloaded", rollouts=[r.name for r in new.rollouts])
        return True

    def _check_requirements(self, config: Config) -> None:
        """Say (logs, metric) what ``config`` needs and lacks; in the background, refuse nothing."""

        def work() -> None:
            missing = startup.check(
                config, self.kube, self._prometheus, lease_namespace=self._lease_namespace
            )
            self.metrics.requirement_missing.clear()
            namespaces = {r.name: r.namespace for r in config.rollouts}
            for item in missing:
                self.metrics.requirement_missing.labels(
                    item.requirement, item.rollout, item.subject
                ).set(1)
                log.error(
                    "missing requirement",
                    requirement=item.requirement,
                    # Like every line about a rollout; no release is read at start-up.
                    rollout=item.rollout or None,
                    namespace=namespaces.get(item.rollout),
                    revision=None,
                    step=None,
                    subject=item.subject,
                    error=item.message,
                )
            if missing:
                log.error(
                    "start-up checks: requirements missing; healthy rollouts run anyway",
                    missing=len(missing),
                )
            else:
                log.info("start-up checks passed", rollouts=[r.name for r in config.rollouts])

        threading.Thread(target=work, name="startup-checks", daemon=True).start()

    # ---- HTTP: /metrics, /healthz, /readyz ---------------------------------------------------

    def healthy(self) -> bool:
        """Alive: the main loop beats, the scheduler runs and no tick is stuck."""
        beating = time.monotonic() - self._heartbeat < HEARTBEAT_LIMIT_SECONDS
        return beating and self._scheduler.running and not self.stuck_ticks()

    def health_report(self) -> tuple[bool, str]:
        """/healthz's answer: healthy or not, and in words why not."""
        problems = []
        if time.monotonic() - self._heartbeat >= HEARTBEAT_LIMIT_SECONDS:
            problems.append("the main loop stopped beating")
        if not self._scheduler.running:
            problems.append("the scheduler is not running")
        problems += [
            f"rollout {name}: tick running for {age:.0f}s"
            for name, age in self.stuck_ticks().items()
        ]
        return not problems, "; ".join(problems)

    def ready(self) -> bool:
        """Ready: healthy, and the Kubernetes API answered recently (when electing a leader)."""
        if not self.healthy():
            return False
        manager = self._elector or self._shards
        if manager is None:
            return True
        contact = manager.last_contact
        limit = self.config.daemon.leader_election.lease_duration.total_seconds() * 2
        return contact is not None and time.monotonic() - contact < limit

    def _start_http(self) -> None:
        host, _, port = self.config.daemon.listen.rpartition(":")
        handler = _handler_for(self)
        try:
            self._http = ThreadingHTTPServer((host or "0.0.0.0", int(port)), handler)  # noqa: S104
        except OSError as e:  # taken, not an address of this host, or a privileged port
            raise StartupError(
                f"cannot listen on {self.config.daemon.listen} (daemon.listen): {e.strerror or e}"
            ) from e
        self._http.daemon_threads = True
        threading.Thread(target=self._http.serve_forever, name="http", daemon=True).start()

    @property
    def http_port(self) -> int:
        """The port /metrics is served on (useful when ``listen`` asked for port 0)."""
        assert self._http is not None
        return int(self._http.server_address[1])


def _handler_for(daemon: Daemon) -> type[BaseHTTPRequestHandler]:
    routes: dict[str, Callable[[], tuple[int, bytes, str]]] = {
        "/metrics": lambda: (200, generate_latest(daemon.metrics.registry), CONTENT_TYPE_LATEST),
        "/healthz": lambda: _probe(*daemon.health_report()),
        "/readyz": lambda: _probe(daemon.ready()),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = routes.get(self.path.split("?", 1)[0])
            status, body, content_type = route() if route else (404, b"not found\n", "text/plain")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Probes hit these endpoints every few seconds; keep them out of the logs."""

    return Handler


def _probe(ok: bool, why: str = "") -> tuple[int, bytes, str]:
    if ok:
        return 200, b"ok\n", "text/plain"
    return 503, f"not ready{': ' + why if why else ''}\n".encode(), "text/plain"


def _cached_namespaces(config: Config) -> set[str]:
    """The namespaces the caches follow: the rollouts', and those searched for declarations."""
    searched = config.discovery.namespaces if config.discovery.enabled else []
    return {r.namespace for r in config.rollouts} | set(searched)


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None
