"""The daemon's own Prometheus metrics, in a registry of their own.

A private registry keeps tests independent (each daemon instance can build
its own) and keeps library default collectors out of our /metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from autocanary.rollout.state import PHASES


@dataclass
class DaemonMetrics:
    """Every metric the daemon exports; one instance per daemon."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.phase = Gauge(
            "autocanary_rollout_phase",
            "1 for the rollout's current phase, 0 for the others",
            ["rollout", "namespace", "phase"],
            registry=r,
        )
        self.step = Gauge(
            "autocanary_rollout_step", "Current step, 1-based; 0 when idle", ["rollout"], registry=r
        )
        self.canary_weight = Gauge(
            "autocanary_canary_weight",
            "Share of ready pods that run the canary (0..1)",
            ["rollout", "namespace"],
            registry=r,
        )
        self.check_value = Gauge(
            "autocanary_check_value",
            "Last value of an analysis check for the canary",
            ["rollout", "check"],
            registry=r,
        )
        self.check_results = Counter(
            "autocanary_check_results",
            "Analysis check outcomes",
            ["rollout", "check", "verdict"],
            registry=r,
        )
        self.rollbacks = Counter(
            "autocanary_rollbacks", "Releases rolled back", ["rollout", "namespace"], registry=r
        )
        self.promotions = Counter(
            "autocanary_promotions", "Releases promoted", ["rollout", "namespace"], registry=r
        )
        # One histogram for the daemon, not one per rollout: per rollout it was 14 of
        # an idle rollout's 24 series (bench/metrics_cost.py); which rollout is slow
        # is the last duration's gauge, and each tick's log line.
        self.tick_duration = Histogram(
            "autocanary_tick_duration_seconds",
            "Duration of one rollout tick, every rollout's",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.last_tick_duration = Gauge(
            "autocanary_last_tick_duration_seconds",
            "Duration of the rollout's last tick",
            ["rollout"],
            registry=r,
        )
        self.tick_lag = Histogram(
            "autocanary_tick_lag_seconds",
            "How late ticks start after they are due (their phase time, a requeue, or a watch "
            "event plus its debounce): time spent waiting for a free worker",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.kube_requests = Counter(
            "autocanary_kube_requests",
            "Requests the daemon sent to the Kubernetes API server, by API call (a watch "
            "counts once, when it starts)",
            ["call"],
            registry=r,
        )
        self.tick_running = Gauge(
            "autocanary_tick_running_seconds",
            "How long the rollout's current tick has been running; 0 between ticks",
            ["rollout"],
            registry=r,
        )
        self.tick_errors = Counter(
            "autocanary_tick_errors",
            "Ticks that failed, by error type",
            ["rollout", "error"],
            registry=r,
        )
        self.rollout_error = Gauge(
            "autocanary_rollout_error",
            "1 while the rollout's ticks fail with an error of this kind (permanent: retried "
            "with backoff until someone acts; transient: retried every interval)",
            ["rollout", "namespace", "kind"],
            registry=r,
        )
        self.query_errors = Counter(
            "autocanary_query_errors",
            "Prometheus queries that failed or returned unusable data",
            ["rollout", "check", "reason"],
            registry=r,
        )
        self.alert_deliveries = Counter(
            "autocanary_alert_deliveries",
            "Alert deliveries by sink and outcome (ok, failed, dropped)",
            ["sink", "outcome"],
            registry=r,
        )
        self.is_leader = Gauge(
            "autocanary_leader",
            "1 while this replica acts: it holds the leader Lease, or at least one shard Lease",
            registry=r,
        )
        self.shards_held = Gauge(
            "autocanary_shards_held",
            "Shard Leases this replica holds and acts on (daemon.leaderElection.shards > 1)",
            registry=r,
        )
        self.config_reloads = Counter(
            "autocanary_config_reloads", "Config reloads by outcome", ["outcome"], registry=r
        )
        self.requirement_missing = Gauge(
            "autocanary_requirement_missing",
            "1 for each requirement found missing at start-up or reload (alert secret, "
            "Prometheus, RBAC)",
            ["requirement", "rollout", "subject"],
            registry=r,
        )
        self.sequential_evalue = Gauge(
            "autocanary_sequential_evalue",
            "Sequential judge e-value per metric and hypothesis (harm, safety)",
            ["rollout", "metric", "hypothesis"],
            registry=r,
        )

    def forget(self, rollout: str) -> None:
        """Stop exporting every series of ``rollout`` (removed from the config or undeclared).

        Left in place, a removed rollout's last phase, step and check values stay on
        /metrics until a restart, and with rollouts declared and undeclared all day
        the daemon's series would only ever grow.
        """
        for metric in (
            self.phase,
            self.step,
            self.canary_weight,
            self.check_value,
            self.check_results,
            self.rollbacks,
            self.promotions,
            self.last_tick_duration,
            self.tick_running,
            self.tick_errors,
            self.rollout_error,
            self.query_errors,
            self.requirement_missing,
            self.sequential_evalue,
        ):
            metric.remove_by_labels({"rollout": rollout})

    def observe_tick(self, rollout: str, seconds: float) -> None:
        """Count one tick of ``rollout`` that took ``seconds``."""
        self.tick_duration.observe(seconds)
        self.last_tick_duration.labels(rollout).set(seconds)

    def set_phase(self, rollout: str, namespace: str, phase: str) -> None:
        """Mark ``phase`` as the rollout's current one."""
        for candidate in PHASES:
            self.phase.labels(rollout, namespace, candidate).set(1 if candidate == phase else 0)
