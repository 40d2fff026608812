"""The engine's analysis window: read from the scrape interval once, said at start-up."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

import structlog
from builders import make_rollout

from autocanary.config.models import RolloutConfig
from autocanary.daemon.engine import RolloutEngine
from autocanary.daemon.metrics import DaemonMetrics
from autocanary.errors import PrometheusUnavailable

S = timedelta(seconds=1)


class ScrapeIntervals:
    """Answers scrape_interval() from a list, recording the series asked about."""

    def __init__(self, *answers: timedelta | Exception | None) -> None:
        self.answers = list(answers)
        self.asked: list[str] = []

    def scrape_interval(self, series: str) -> timedelta | None:
        self.asked.append(series)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def engine(rollout: RolloutConfig, prometheus: ScrapeIntervals) -> RolloutEngine:
    # Only the Prometheus side is used here; the other adapters are never touched.
    unused = cast(Any, None)
    return RolloutEngine(
        rollout,
        kube=unused,
        prometheus=cast(Any, prometheus),
        notifier=unused,
        metrics=DaemonMetrics(),
    )


def test_an_unset_window_is_four_scrapes_and_said_once() -> None:
    prometheus = ScrapeIntervals(30 * S)
    subject = engine(make_rollout(), prometheus)
    with structlog.testing.capture_logs() as events:
        assert subject.scrape_interval() == 30 * S
        assert subject.effective_rollout().window == 120 * S
        assert subject.scrape_interval() == 30 * S  # asked once, then kept
    assert prometheus.asked == ['probe_requests_total{target="web"}']
    said = [e for e in events if e["event"] == "analysis window"]
    assert said == [
        {
            "event": "analysis window",
            "log_level": "info",
            "rollout": "web",
            "namespace": "shop",
            "scrape_interval": "30s",
            "window": "2m",
            "configured": False,
        }
    ]


def test_a_configured_window_too_short_for_the_scrape_is_a_warning() -> None:
    subject = engine(make_rollout(analysis={"window": "1m"}), ScrapeIntervals(30 * S))
    with structlog.testing.capture_logs() as events:
        subject.scrape_interval()
    (warning,) = [e for e in events if e["log_level"] == "warning"]
    assert warning["event"] == "analysis window too short"
    assert "analysis.window 1m holds fewer than 4 scrapes" in warning["problem"]
    assert subject.effective_rollout().window == 60 * S, "a configured window is kept"


def test_without_an_answer_the_window_is_the_interval_until_one_comes() -> None:
    prometheus = ScrapeIntervals(PrometheusUnavailable("down"), None)
    subject = engine(make_rollout(), prometheus)
    with structlog.testing.capture_logs() as events:
        assert subject.effective_rollout().window == 30 * S
    assert [e["event"] for e in events] == ["cannot read the scrape interval"]
    # Asked again only after a minute: a tick every interval must not hammer Prometheus.
    assert subject.scrape_interval() is None
    assert len(prometheus.asked) == 1
