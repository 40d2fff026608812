"""``autocanary backtest`` against a real Prometheus holding real history.

The history is synthetic but real: probe-style OpenMetrics with timestamps
(request counters per version and code, latency histograms), turned into TSDB
blocks by ``promtool tsdb create-blocks-from openmetrics`` in a fresh data
directory that a Prometheus then serves. On 2025-03-01: v1 is stable; v2 is
released at 12:00 and behaves (1% errors); v3 is released at 14:00 and its
error rate jumps from 1% to 6% at 14:03.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from autocanary import cli
from autocanary.adapters.prometheus import PrometheusClient
from autocanary.adapters.prometheus_history import PrometheusHistory
from autocanary.backtest import synthetic
from autocanary.backtest.errors import NoDataError, UnknownVersionError
from autocanary.backtest.report import Release, Report
from autocanary.backtest.run import backtest
from autocanary.backtest.synthetic import TrafficChange, VersionTraffic
from autocanary.config.loader import parse_config
from autocanary.config.models import Config
from autocanary_testbed.monitoring import PrometheusServer, find_tool

pytestmark = pytest.mark.integration

DAY = datetime(2025, 3, 1, tzinfo=UTC)
GOOD_START = DAY + timedelta(hours=12)
BAD_START = DAY + timedelta(hours=14)
JUMP = BAD_START + timedelta(minutes=3)
HOLDS = timedelta(minutes=6)  # three steps held 2m each
INTERVAL = timedelta(minutes=1)
FAILURE_LIMIT = 1

TRAFFIC = [
    VersionTraffic(
        "v1", GOOD_START - timedelta(minutes=30), GOOD_START + timedelta(minutes=40), rate=20
    ),
    VersionTraffic("v2", GOOD_START, BAD_START + timedelta(hours=1), rate=20),
    VersionTraffic(
        "v3",
        BAD_START,
        BAD_START + timedelta(minutes=40),
        rate=10,
        changes=(TrafficChange(JUMP, error_fraction=0.06),),
    ),
]

CONFIG = """
prometheus:
  url: http://127.0.0.1:9    # replaced by --prometheus
rollouts:
  - name: shop               # the probe's target label
    namespace: demo
    stable: shop
    interval: 1m
    steps:
      - {canary: 1, hold: 2m}
      - {canary: 50%, hold: 2m}
      - {canary: 100%, hold: 2m}
    analysis:
      warmup: 0s             # the demo's history has no cold starts
      minRequests: 20
      failureLimit: 1
      checks:
        - {name: error-rate, template: error-rate, max: 2%}
        - {name: latency-p99, template: latency, quantile: 0.99, max: 500ms}
"""

GOOD = Release("v2", GOOD_START, GOOD_START + timedelta(minutes=30), "v2", "v1")
BAD = Release("v3", BAD_START, BAD_START + timedelta(minutes=30), "v3", "v2")


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A Prometheus serving the synthetic history (retention long enough to keep 2025)."""
    work = tmp_path_factory.mktemp("backtest-prometheus")
    source = work / "history.om"
    source.write_text(synthetic.openmetrics("shop", TRAFFIC), encoding="utf-8")
    data = work / "data"
    subprocess.run(
        [str(find_tool("promtool")), "tsdb", "create-blocks-from", "openmetrics", "-q",
         str(source), str(data)],
        check=True,
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    assert list(data.glob("*/meta.json")), "promtool wrote no blocks"
    with PrometheusServer(work / "prometheus", storage_path=data, retention="100y") as server:
        yield server


@pytest.fixture
def config(history: PrometheusServer) -> Config:
    return parse_config(CONFIG.replace("http://127.0.0.1:9", history.url))


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "autocanary.yaml"
    path.write_text(CONFIG)
    return path


def run_backtest(config: Config, releases: list[Release], *sets: str) -> Report:
    client = PrometheusClient(config.prometheus)
    try:
        with PrometheusHistory(config.prometheus) as meta:
            return backtest(
                config,
                "shop",
                releases,
                source=client,
                history=meta,
                now=datetime.now(UTC),
                set_specs=sets,
                prometheus=config.prometheus.url,
                scrapes=client,  # as the command does
            )
    finally:
        client.close()


def cli_backtest(
    capsys: pytest.CaptureFixture[str], history: PrometheusServer, config_file: Path, *args: str
) -> tuple[int, str, str]:
    code = cli.main(
        [
            "backtest",
            "-c",
            str(config_file),
            "--rollout",
            "shop",
            "--prometheus",
            history.url,
            *args,
        ]
    )
    out, err = capsys.readouterr()
    return code, out, err


def window_args(release: Release, canary: str | None = None) -> list[str]:
    return [
        "--from", release.start.isoformat(), "--to", release.end.isoformat(),
        "--canary-version", canary or release.canary_version,
        "--stable-version", release.stable_version,
    ]  # fmt: skip


def test_this_history_is_the_demo_of_the_docs() -> None:
    assert synthetic.demo_traffic() == TRAFFIC


def test_the_bad_release_is_rolled_back_at_the_first_interval_after_the_jump(
    config: Config,
) -> None:
    result = run_backtest(config, [BAD]).replay("v3", "config")
    analysed = [e for e in result.timeline if e.verdict is not None]
    before = [e for e in analysed if e.at <= JUMP]
    after = [e for e in analysed if e.at > JUMP]
    assert before, "no interval analysed before the jump"
    assert {e.verdict for e in before} == {"pass"}
    error_rates = [c.value for e in before for c in e.checks if c.name == "error-rate"]
    assert all(v is not None and 0.005 < v < 0.015 for v in error_rates), error_rates
    # The first interval ending after the jump fails, and so does every one after it,
    # failureLimit + 1 in all: the last of them rolls back.
    assert [e.verdict for e in after] == ["fail"] * (FAILURE_LIMIT + 1)
    assert after[0].at <= JUMP + INTERVAL
    for entry in after:
        (error_rate,) = [c for c in entry.checks if c.name == "error-rate"]
        assert error_rate.verdict == "fail"
        assert error_rate.value == pytest.approx(0.06, abs=0.005)
        assert error_rate.upper == pytest.approx(0.02)
    outcome = result.outcome
    assert outcome.decision == "rolledBack"
    assert outcome.at == after[-1].at
    assert outcome.at < BAD_START + HOLDS  # never reached promotion
    assert "error-rate: 0.06 is above the maximum 0.02" in outcome.reason
    assert f"failureLimit {FAILURE_LIMIT}" in outcome.reason


def test_the_good_release_is_promoted_when_its_schedule_allows(config: Config) -> None:
    result = run_backtest(config, [GOOD]).replay("v2", "config")
    assert result.outcome.decision == "promoted"
    assert result.outcome.at == GOOD_START + HOLDS
    advances = [e.at for e in result.timeline for ev in e.events if ev.reason == "StepAdvanced"]
    assert advances == [GOOD_START + timedelta(minutes=2), GOOD_START + timedelta(minutes=4)]
    analysed = [e for e in result.timeline if e.verdict is not None]
    assert {e.verdict for e in analysed} == {"pass"}
    assert len(analysed) == 6  # two per step
    # Latency comes from the histogram buckets: a log-normal with median 50ms has p99 ~160ms.
    p99 = [c.value for e in analysed for c in e.checks if c.name == "latency-p99"]
    assert all(v is not None and 0.1 < v < 0.25 for v in p99), p99
    requests = [e.canary_requests for e in analysed]
    assert all(r is not None and r == pytest.approx(1200, rel=0.05) for r in requests), requests


def test_with_no_window_configured_it_is_four_scrapes_of_the_history_as_in_the_daemon(
    history: PrometheusServer,
) -> None:
    # Judged every 10s over history sampled every 15s: the daemon's default window is
    # four scrapes (1m), read from Prometheus; the interval as window would hold at
    # most one sample, and increase() over it gives nothing.
    every_10s = CONFIG.replace("http://127.0.0.1:9", history.url).replace(
        "interval: 1m", "interval: 10s"
    )
    result = run_backtest(parse_config(every_10s), [GOOD]).replay("v2", "config")
    assert result.outcome.decision == "promoted"
    analysed = [e for e in result.timeline if e.verdict is not None]
    assert {e.verdict for e in analysed} == {"pass"}
    # Each analysis counts a minute of canary traffic, as with the 1m interval above.
    requests = [e.canary_requests for e in analysed]
    assert all(r is not None and r == pytest.approx(1200, rel=0.05) for r in requests), requests

    # A window configured is the one used: 10s holds no increase, so nothing is judged.
    configured = every_10s.replace("    analysis:\n", "    analysis:\n      window: 10s\n")
    with pytest.raises(NoDataError):
        run_backtest(parse_config(configured), [GOOD])


def test_the_sequential_judge_is_replayed_as_the_daemon_runs_it(history: PrometheusServer) -> None:
    sequential = CONFIG.replace("http://127.0.0.1:9", history.url).replace(
        "      checks:\n        - {name: error-rate, template: error-rate, max: 2%}\n",
        "      sequential: {maxDuration: 25m}\n      checks:\n",
    )
    config = parse_config(sequential)
    assert config.rollout("shop").analysis.sequential is not None
    report = run_backtest(config, [GOOD, BAD])

    bad = report.replay("v3", "config")
    judged = [(e.at, c) for e in bad.timeline for c in e.checks if c.name == "sequential:errors"]
    assert [c.verdict for at, c in judged if at <= JUMP] == ["inconclusive"] * 3
    harm = [(at, c) for at, c in judged if c.verdict == "fail"]
    assert len(harm) == 1  # proven harm rolls back at once, whatever failureLimit says
    at, point = harm[0]
    assert at > JUMP
    assert point.upper == pytest.approx(1.2)  # odds ratios up to 1 + tolerance are harmless
    assert point.value is not None
    assert point.value > point.upper
    assert bad.outcome.decision == "rolledBack"
    assert bad.outcome.at == at
    assert bad.outcome.reason.startswith("sequential judge: errors: canary error odds")

    good = report.replay("v2", "config")
    verdicts = [c.verdict for e in good.timeline for c in e.checks if c.name == "sequential:errors"]
    # The last step (100%: no stable pods left to compare with) waits for proven safety;
    # once proven it stays proven, and promotion follows the last step's hold.
    proven = verdicts.index("pass")
    assert set(verdicts[:proven]) == {"inconclusive"}
    assert set(verdicts[proven:]) == {"pass"}
    assert good.outcome.decision == "promoted"
    assert GOOD_START + HOLDS < good.outcome.at < GOOD_START + timedelta(minutes=25)
    assert good.outcome.at == good.timeline[-1].at


def test_a_looser_threshold_promotes_the_bad_release_and_the_table_shows_it(
    capsys: pytest.CaptureFixture[str], history: PrometheusServer, config_file: Path, tmp_path: Path
) -> None:
    releases = tmp_path / "releases.yaml"
    releases.write_text(
        f"- {{name: good, from: '{GOOD.start.isoformat()}', to: '{GOOD.end.isoformat()}', "
        "canaryVersion: v2, stableVersion: v1}\n"
        f"- {{name: bad, from: '{BAD.start.isoformat()}', to: '{BAD.end.isoformat()}', "
        "canaryVersion: v3, stableVersion: v2}\n"
    )
    code, out, err = cli_backtest(
        capsys, history, config_file,
        "--releases", str(releases),
        "--set", "loose:analysis.checks.error-rate.max=10%",
        "--set", "strict:analysis.failureLimit=0",
        "-o", "table",
    )  # fmt: skip
    assert (code, err) == (0, "")
    header, good, bad, blank, *legend = out.splitlines()
    assert blank == ""
    assert header.split() == ["release", "canary/stable", "config", "loose", "strict"]
    assert good.split() == ["good", "v2/v1", *["promoted", "at", "12:06:00", "(+6m)"] * 3]
    cells = bad.split()
    assert cells[:2] == ["bad", "v3/v2"]
    assert cells[2:5] == ["rolled", "back", "at"]  # config: rolled back...
    assert "promoted at 14:06:00 (+6m)" in bad  # ...loose: promoted, like the good one
    assert bad.count("rolled back") == 2  # strict rolls back too, one interval earlier
    assert legend == [
        "config: the rollout as configured",
        "loose: --set analysis.checks.error-rate.max=10%",
        "strict: --set analysis.failureLimit=0",
    ]


def test_json_output_round_trips(
    capsys: pytest.CaptureFixture[str],
    history: PrometheusServer,
    config_file: Path,
    config: Config,
) -> None:
    code, out, _ = cli_backtest(capsys, history, config_file, *window_args(BAD), "-o", "json")
    assert code == 0
    report = Report.from_json(out)
    assert report.to_json() + "\n" == out
    assert json.loads(out)["replays"][0]["outcome"]["decision"] == "rolledBack"
    # The same as the library's answer.
    assert report.replays == run_backtest(config, [BAD]).replays


def test_the_plot_is_a_valid_png(
    capsys: pytest.CaptureFixture[str], history: PrometheusServer, config_file: Path, tmp_path: Path
) -> None:
    image = pytest.importorskip("matplotlib.image")
    path = tmp_path / "backtest.png"
    code, out, err = cli_backtest(
        capsys, history, config_file, *window_args(BAD),
        "--set", "analysis.checks.error-rate.max=10%", "--plot", str(path),
    )  # fmt: skip
    assert code == 0
    assert f"plot written to {path}" in err
    assert "decision: rolled back at 14:" in out
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = image.imread(path)
    height, width, channels = pixels.shape
    assert (channels, width > 600, height > 300) == (4, True, True)
    assert pixels[..., :3].std() > 0.05  # something was drawn, not a blank canvas


def test_a_version_that_matches_nothing_lists_the_versions_present(
    capsys: pytest.CaptureFixture[str], history: PrometheusServer, config_file: Path
) -> None:
    code, out, err = cli_backtest(capsys, history, config_file, *window_args(BAD, canary="v9"))
    assert (code, out) == (1, "")
    assert "the canary version 'v9' matches no series of probe_requests_total" in err
    assert "versions there: v2, v3" in err


def test_a_window_without_data_names_the_query(config: Config) -> None:
    empty = Release(
        "old", DAY - timedelta(days=30), DAY - timedelta(days=30, minutes=-30), "v3", "v2"
    )
    with pytest.raises(NoDataError) as raised:
        run_backtest(config, [empty])
    message = str(raised.value)
    assert 'no samples of probe_requests_total{target="shop"}' in message
    assert (
        'count by (version) (last_over_time(probe_requests_total{target="shop"}[30m]))' in message
    )


def test_a_check_whose_query_never_answers_is_named(config: Config) -> None:
    with pytest.raises(NoDataError) as raised:
        run_backtest(
            config,
            [BAD],
            "analysis.checks.latency-p99.template=null",
            "analysis.checks.latency-p99.quantile=null",
            'analysis.checks.latency-p99.query=max(no_such_metric{version="{{ version }}"})',
        )
    message = str(raised.value)
    assert "release 'v3', variant 'custom'" in message
    assert 'check latency-p99 (canary): max(no_such_metric{version="v3"})' in message


def test_an_unknown_version_is_caught_before_any_replay(config: Config) -> None:
    with pytest.raises(UnknownVersionError, match="stable version 'v0'"):
        run_backtest(config, [Release("x", BAD.start, BAD.end, "v3", "v0")])


def test_retention_shorter_than_the_window_is_said(
    capsys: pytest.CaptureFixture[str], config_file: Path, tmp_path: Path
) -> None:
    with PrometheusServer(tmp_path / "short", retention="1h") as short:
        capsys.readouterr()  # the harness's own log lines
        code, out, err = cli_backtest(
            capsys, short, config_file,
            "--from", "now-3h", "--to", "now-2h", "--canary-version", "v3",
            "--stable-version", "v2",
        )  # fmt: skip
    assert (code, out) == (1, "")
    assert f"Prometheus at {short.url} keeps samples for 1h" in err
    assert "choose a later window or a Prometheus with longer retention" in err


def test_an_unreachable_prometheus_is_said(
    capsys: pytest.CaptureFixture[str], config_file: Path
) -> None:
    code = cli.main(
        [
            "backtest",
            "-c",
            str(config_file),
            *window_args(BAD),
            "--prometheus",
            "http://127.0.0.1:1",
        ]
    )
    _, err = capsys.readouterr()
    assert code == 1
    assert "cannot reach Prometheus at http://127.0.0.1:1" in err


# The bad release's history as Traefik v3.6 counts it per backend Service: v2 behind the
# stable's Service, v3 behind the canary's (the same traffic, renamed).
STABLE_BACKEND = "demo-shop-stable-http-80@kubernetesgateway"
CANARY_BACKEND = "demo-shop-canary-http-80@kubernetesgateway"
GATEWAY_CONFIG = (
    CONFIG.replace(
        "    interval: 1m\n",
        "    interval: 1m\n"
        "    strategy: gateway\n"
        "    gateway: {httpRoute: shop, stableService: shop-stable, canaryService: shop-canary}\n",
    )
    .replace("      - {canary: 1, hold: 2m}\n", "      - {canary: 5%, hold: 2m}\n")
    .replace("    analysis:\n", "    analysis:\n      source: gateway\n")
)


@pytest.fixture(scope="module")
def gateway_history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A Prometheus serving the bad release's history as Traefik's per-backend series."""
    work = tmp_path_factory.mktemp("backtest-gateway")
    text = synthetic.openmetrics("shop", [t for t in TRAFFIC if t.version in ("v2", "v3")])
    text = (
        text.replace("probe_request", "traefik_service_request")
        .replace('target="shop",version="v2"', f'service="{STABLE_BACKEND}"')
        .replace('target="shop",version="v3"', f'service="{CANARY_BACKEND}"')
    )
    assert 'version="' not in text
    source = work / "history.om"
    source.write_text(text, encoding="utf-8")
    data = work / "data"
    subprocess.run(
        [str(find_tool("promtool")), "tsdb", "create-blocks-from", "openmetrics", "-q",
         str(source), str(data)],
        check=True,
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    with PrometheusServer(work / "prometheus", storage_path=data, retention="100y") as server:
        yield server


def test_a_gateway_rollout_is_replayed_on_the_gateways_per_backend_series(
    gateway_history: PrometheusServer,
) -> None:
    config = parse_config(GATEWAY_CONFIG.replace("http://127.0.0.1:9", gateway_history.url))
    result = run_backtest(config, [BAD]).replay("v3", "config")
    analysed = [e for e in result.timeline if e.verdict is not None]
    before = [e for e in analysed if e.at <= JUMP]
    after = [e for e in analysed if e.at > JUMP]
    assert before, "no interval analysed before the jump"
    assert {e.verdict for e in before} == {"pass"}
    assert [e.verdict for e in after] == ["fail"] * (FAILURE_LIMIT + 1)
    for entry in after:
        (error_rate,) = [c for c in entry.checks if c.name == "error-rate"]
        assert error_rate.value == pytest.approx(0.06, abs=0.005)
    assert result.outcome.decision == "rolledBack"

    # A Service the gateway's series do not name: said before any replay.
    elsewhere = parse_config(
        GATEWAY_CONFIG.replace("http://127.0.0.1:9", gateway_history.url).replace(
            "canaryService: shop-canary", "canaryService: cart-canary"
        )
    )
    with pytest.raises(UnknownVersionError) as raised:
        run_backtest(elsewhere, [BAD])
    assert "the canary's backend Service 'cart-canary' matches no series of" in str(raised.value)
