"""The sequential judge's counters, read from a real Prometheus scraping a real probe.

Four testpage processes stand behind one ServiceProxy: the stable ``v1``,
``v2`` failing 30% of its requests, and for an A/A comparison with events on
both sides two processes of one build with a 5% background error rate under
two version labels, ``v3`` and ``v3b``. A probe named ``web`` sends them
traffic and Prometheus scrapes it. The queries are rendered by
``judging.counter_queries`` for a rollout named ``web`` and read
with ``PrometheusClient.query_vector``, as the engine reads them; the judge
then gets polls at instants Prometheus holds data for, the first of them as the
baseline, as at a step's first poll.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from autocanary.adapters.prometheus import PrometheusClient
from autocanary.analysis import judging
from autocanary.config.models import PrometheusConfig, RolloutConfig, SequentialAnalysisConfig
from autocanary.judge import CounterSnapshot, Judgement, JudgeState, JudgeVerdict, counts
from autocanary_testbed.apps import ProbeProcess, start_probe, start_testpage
from autocanary_testbed.monitoring import PrometheusServer, ScrapeTarget
from autocanary_testbed.procs import ProcessGroup
from autocanary_testbed.serviceproxy import ServiceProxy
from autocanary_testbed.waiting import wait_until

pytestmark = pytest.mark.integration

PrometheusFactory = Callable[..., PrometheusServer]
WAIT_S = 60.0  # a bound for a hang on a loaded machine, not a timing expectation
POLL_REQUESTS = 30  # new canary requests between two polls of the judge
MAX_POLLS = 5
ERROR_CODES = re.compile(r"5..|error")
LATENCY_THRESHOLD = 1.0  # seconds, a bucket boundary: the latency metric's plumbing, not a fault

CONFIG = RolloutConfig.model_validate(
    {
        "name": "web",
        "namespace": "shop",
        "stable": "web",
        "interval": "10s",
        "analysis": {
            "source": "probe",
            "sequential": {
                "latencyThresholds": [f"{LATENCY_THRESHOLD:g}s"],
            },
        },
    }
)


def _sequential(config: RolloutConfig) -> SequentialAnalysisConfig:
    assert config.analysis.sequential is not None
    return config.analysis.sequential


SEQUENTIAL = _sequential(CONFIG)


@dataclass(frozen=True)
class Counters:
    """One version's counters summed over series: requests, errors, buckets +Inf and 1s."""

    requests: float
    errors: float
    observed: float
    fast: float

    def fields(self) -> tuple[float, float, float, float]:
        return (self.requests, self.errors, self.observed, self.fast)


@dataclass
class Bed:
    """The running processes and a client for their Prometheus."""

    probe: ProbeProcess
    client: PrometheusClient

    def snapshot(self, version: str, at: datetime) -> CounterSnapshot:
        """What the engine reads for ``version`` at ``at`` (canary v2 against stable v1)."""
        queries = judging.counter_queries(CONFIG, version, "v2", "v1")
        return judging.snapshot(self.client.query_vector(queries.joined(), at))

    def requests(self, version: str, at: datetime) -> float:
        series = self.snapshot(version, at).series.values()
        return sum(s.requests for s in series)

    def probe_counters(self, version: str) -> Counters:
        """The probe's own /metrics for ``version`` of target ``web``, summed over codes."""
        ours = [
            (labels, value)
            for labels, value in self.probe.samples("probe_requests_total")
            if labels.get("target") == "web" and labels.get("version") == version
        ]
        buckets = {
            labels["le"]: value
            for labels, value in self.probe.samples("probe_request_duration_seconds_bucket")
            if labels.get("target") == "web" and labels.get("version") == version
        }
        return Counters(
            requests=sum(v for _, v in ours),
            errors=sum(v for labels, v in ours if ERROR_CODES.fullmatch(labels.get("code", ""))),
            observed=buckets["+Inf"],
            fast=buckets[f"{LATENCY_THRESHOLD}"],
        )


def totals(snapshot: CounterSnapshot) -> Counters:
    series = snapshot.series.values()
    return Counters(
        requests=sum(s.requests for s in series),
        errors=sum(s.errors or 0.0 for s in series),  # no error series yet: no errors
        observed=sum(s.buckets[math.inf] for s in series),
        fast=sum(s.buckets[LATENCY_THRESHOLD] for s in series),
    )


@pytest.fixture
def bed(
    group: ProcessGroup, proxy: ServiceProxy, prometheus_factory: PrometheusFactory
) -> Iterator[Bed]:
    v1 = start_testpage(group, "v1")
    v2 = start_testpage(group, "v2", env={"FAULT_ERROR_RATE": "0.3", "FAULT_SEED": "7"})
    v3 = start_testpage(group, "v3", env={"FAULT_ERROR_RATE": "0.05", "FAULT_SEED": "1"})
    v3b = start_testpage(group, "v3b", env={"FAULT_ERROR_RATE": "0.05", "FAULT_SEED": "2"})
    proxy.set_backends([v1.address, v2.address, v3.address, v3b.address])
    probe = start_probe(group, ["--target", f"web={proxy.url}/", "--rate", "80/s"])
    prometheus = prometheus_factory([ScrapeTarget("probe", probe.metrics_address)])
    prometheus.wait_for_target_up("probe", timeout=WAIT_S)
    client = PrometheusClient(PrometheusConfig.model_validate({"url": prometheus.url}))
    try:
        wait_until(
            lambda: all(
                client.query_vector(judging.counter_queries(CONFIG, v, "v2", "v1").requests)
                for v in ("v1", "v2", "v3", "v3b")
            ),
            timeout=WAIT_S,
            what="Prometheus holding requests of every version",
        )
        yield Bed(probe, client)
    finally:
        client.close()


def test_the_counters_are_the_probes_own_integers(bed: Bed) -> None:
    for version in ("v2", "v1"):
        before = bed.probe_counters(version)
        # A scrape after that read: the requests counter and the histogram (collected
        # one after the other) have both moved past it in Prometheus.

        def scraped_since(version: str = version, before: Counters = before) -> bool:
            now = totals(bed.snapshot(version, datetime.now(UTC)))
            return now.requests > before.requests and now.observed > before.observed

        wait_until(
            scraped_since,
            timeout=WAIT_S,
            what=f"Prometheus scraping {version}'s requests past {before.requests:g}",
        )
        snapshot = bed.snapshot(version, datetime.now(UTC))
        after = bed.probe_counters(version)

        # One series, the probe's own (Prometheus labels it with the scrape address).
        assert set(snapshot.series) == {bed.probe.metrics_address}
        series = snapshot.series[bed.probe.metrics_address]
        values = [series.requests, series.errors or 0.0, *series.buckets.values()]
        assert all(v == int(v) for v in values), values
        # Every bucket the probe exports, by its upper bound.
        assert math.inf in series.buckets
        assert LATENCY_THRESHOLD in series.buckets
        assert len(series.buckets) > 10
        # The judge reads them as exact integer counts in its field layout.
        read = counts.reconcile({}, {}, snapshot, (LATENCY_THRESHOLD,))
        assert read.skipped == ()
        (vector,) = read.counters.values()
        assert vector == tuple(int(v) for v in totals(snapshot).fields())

        got = totals(snapshot)
        for name, low, value, high in zip(
            ("requests", "errors", "observed", "fast"),
            before.fields(),
            got.fields(),
            after.fields(),
            strict=True,
        ):
            assert low <= value <= high, f"{version} {name}: {low} <= {value} <= {high}"
        assert got.requests > before.requests
        assert got.errors <= got.requests

    # v1 never failed: no error series at all, and the snapshot says so (absent, read as 0).
    assert bed.probe_counters("v1").errors == 0
    queries = judging.counter_queries(CONFIG, "v1", "v2", "v1")
    assert bed.client.query_vector(queries.errors) == []
    assert totals(bed.snapshot("v1", datetime.now(UTC))).errors == 0
    assert totals(bed.snapshot("v2", datetime.now(UTC))).errors > 0


def _polls(bed: Bed) -> list[datetime]:
    """Instants ``MAX_POLLS + 1`` apart by at least ``POLL_REQUESTS`` new requests of v2."""
    instants = [datetime.now(UTC)]
    while len(instants) <= MAX_POLLS:
        last = bed.requests("v2", instants[-1])

        def moved(last: float = last) -> bool:
            return bed.requests("v2", datetime.now(UTC)) >= last + POLL_REQUESTS

        wait_until(
            moved,
            timeout=WAIT_S,
            what=f"{POLL_REQUESTS} more v2 requests in Prometheus",
        )
        instants.append(datetime.now(UTC))
    return instants


def _judge(bed: Bed, canary: str, stable: str, instants: list[datetime]) -> list[Judgement]:
    """The judge's polls of ``canary`` against ``stable``, the first instant as the baseline."""
    baseline: tuple[CounterSnapshot, CounterSnapshot] | None = (
        bed.snapshot(canary, instants[0]),
        bed.snapshot(stable, instants[0]),
    )
    persisted: JudgeState | None = None
    judgements = []
    for at in instants[1:]:
        now = (bed.snapshot(canary, at), bed.snapshot(stable, at))
        state, judgement = judging.judge_interval(SEQUENTIAL, persisted, baseline, now)
        baseline = None
        # Through its stored form, as the daemon keeps it between polls.
        persisted = JudgeState.from_dict(state.to_dict())
        judgements.append(judgement)
    return judgements


def test_the_judge_proves_harm_for_v2_and_not_in_an_a_a_comparison(bed: Bed) -> None:
    instants = _polls(bed)
    bad = _judge(bed, "v2", "v1", instants)
    same = _judge(bed, "v3b", "v3", instants)

    verdicts = [j.verdict for j in bad]
    assert JudgeVerdict.ROLLBACK in verdicts, [j.reason for j in bad]
    first = verdicts.index(JudgeVerdict.ROLLBACK)
    proof = bad[first]
    assert not proof.critical
    errors = proof.metrics[0]
    assert errors.name == "errors"
    assert errors.harmful
    assert errors.ci_low > SEQUENTIAL.tolerance + 1  # v2 is worse by more than the tolerance
    assert errors.canary_events > 0
    assert errors.stable_events == 0
    assert proof.reason.startswith("errors: canary error odds")
    # Each poll saw the traffic since the previous one, and only that.
    assert all(j.poll.canary_requests >= POLL_REQUESTS for j in bad)
    assert errors.canary_requests == sum(j.poll.canary_requests for j in bad[: first + 1])

    assert [j.verdict for j in same].count(JudgeVerdict.ROLLBACK) == 0, [j.reason for j in same]
    assert all(not m.harmful for j in same for m in j.metrics)
    last = same[-1].metrics[0]
    # Both got traffic and errors all along: the judge weighed real evidence.
    assert last.canary_events > 0
    assert last.stable_events > 0
    assert last.canary_requests >= MAX_POLLS * POLL_REQUESTS // 2
    assert last.stable_requests >= MAX_POLLS * POLL_REQUESTS // 2
