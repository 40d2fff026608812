"""The Prometheus adapter: the only daemon module that queries Prometheus.

Built on prometheus-api-client with its automatic retries turned off: a tick
must not stall on sleeps inside a library, and an unanswered query is simply
inconclusive for that interval. Errors are translated: a rejected query is a
:class:`QueryError` (fix the PromQL), anything transport-like a
:class:`PrometheusUnavailable`.
"""

from __future__ import annotations

import ast
import itertools
import json
import re
import statistics
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from autocanary.adapters.deadline import DeadlineExceeded, DeadlineRunner
from autocanary.config.models import PrometheusConfig
from autocanary.config.redact import redact
from autocanary.config.units import parse_duration
from autocanary.errors import PrometheusUnavailable, QueryError
from autocanary.promql import Sample

_STATUS = re.compile(r"HTTP Status Code (\d{3})")
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


def _transport_error(e: requests.RequestException) -> str:
    """What went wrong on the wire, in a few words.

    requests's own message quotes the whole request URL, URL-encoded query
    included (hundreds of characters that say nothing to a person reading
    a paused release's reason).
    """
    if isinstance(e, requests.Timeout):
        return "timed out"
    text = str(e)
    errno = _ERRNO.search(text)
    if errno is not None:
        return errno.group(1).strip().lower()
    if "RemoteDisconnected" in text or "Connection aborted" in text:
        return "the connection was closed without an answer"
    return type(e).__name__


def _prometheus_error(e: PrometheusApiClientException) -> str:
    """Prometheus's own error text ("parse error: ..."), out of the library's message.

    The library says ``HTTP Status Code 400 (b'{...JSON...}')``; the JSON's
    ``error`` field is what a user needs to fix the query.
    """
    text = str(e)
    body = re.search(r"\((b'.*'|b\".*\")\)\s*$", text, re.S)
    if body is not None:
        try:
            data = json.loads(ast.literal_eval(body.group(1)))
        except (ValueError, SyntaxError):
            return text
        if isinstance(data, dict) and data.get("error"):
            status = _STATUS.search(text)
            prefix = f"HTTP {status.group(1)}: " if status else ""
            return f"{prefix}{data.get('errorType', 'error')}: {data['error']}"
    return text


def auth_headers(cfg: PrometheusConfig) -> dict[str, str]:
    """The headers every request to ``cfg.url`` carries (a bearer token, if configured)."""
    if not cfg.bearer_token_file:
        return {}
    try:
        token = Path(cfg.bearer_token_file).read_text(encoding="utf-8").strip()
    except OSError as e:
        raise PrometheusUnavailable(
            f"cannot read prometheus.bearerTokenFile {cfg.bearer_token_file}: {e.strerror}"
        ) from e
    return {"Authorization": f"Bearer {token}"}


class PrometheusClient:
    """Instant queries that must answer with one number, or nothing."""

    def __init__(self, cfg: PrometheusConfig) -> None:
        """Connect lazily to ``cfg.url``; every query has ``cfg.timeout`` of wall-clock time."""
        #: For messages: credentials in the URL (user:password@) are never shown.
        self.url = redact(cfg.url)
        self._base_url = cfg.url
        self._timeout = cfg.timeout.total_seconds()
        self._headers = auth_headers(cfg)
        self._runner = DeadlineRunner("prometheus")
        self._connection = PrometheusConnect(
            url=cfg.url,
            headers=self._headers or None,
            retry=Retry(total=0, raise_on_status=False),
            timeout=self._timeout,
        )

    def close(self) -> None:
        """Release the HTTP session."""
        self._connection.close()

    def query_vector(
        self, promql: str, at: datetime | None = None, *, timeout: float | None = None
    ) -> list[Sample]:
        """Evaluate ``promql`` at ``at``: every series' labels and value."""
        return _samples(self._query(promql, at, timeout), promql)

    def query_value(
        self, promql: str, at: datetime | None = None, *, timeout: float | None = None
    ) -> float | None:
        """Evaluate ``promql`` at ``at`` (default now): one number, or None for an empty result.

        A result with several series is a :class:`QueryError`: a check must
        aggregate (``sum(...)``) to one value per version. ``timeout`` (seconds
        of wall-clock time) may shorten the configured one, never lengthen it.
        """
        return _single_value(self._query(promql, at, timeout), promql)

    def scrape_interval(self, series: str, at: datetime | None = None) -> timedelta | None:
        """How often Prometheus scrapes ``series`` (a selector), or None if it has no samples.

        From the targets API (``scrapeInterval`` of the active targets in the
        series' jobs; the longest when they differ), else from the spacing of
        the series' raw samples over the last ten minutes (recording rules,
        federation, a Prometheus that hides its targets). At a past ``at`` (a
        backtest) only the samples' spacing in the ten minutes before it: the
        targets API tells how Prometheus scrapes now, not then.
        """
        if at is not None:
            return self._sample_spacing(series, at)
        jobs = {
            labels.get("job", "") for labels, _ in self.query_vector(f"count by (job) ({series})")
        }
        if not jobs:
            return None
        intervals = [
            parse_duration(t["scrapeInterval"])
            for t in self._active_targets()
            if t.get("labels", {}).get("job") in jobs and t.get("scrapeInterval")
        ]
        if intervals:
            return max(intervals)
        return self._sample_spacing(series)

    def _active_targets(self) -> list[dict[str, Any]]:
        def read() -> Any:
            response = requests.get(
                f"{self._base_url}/api/v1/targets",
                params={"state": "active"},
                headers=self._headers,
                timeout=self._timeout,
            )
            response.raise_for_status()
            return response.json()["data"]["activeTargets"]

        try:
            targets = self._runner.call(read, self._timeout)
        except DeadlineExceeded as e:
            raise PrometheusUnavailable(f"Prometheus at {self.url} timed out: {e}") from e
        except requests.RequestException as e:
            raise PrometheusUnavailable(
                f"cannot read the targets of {self.url}: {_transport_error(e)}"
            ) from e
        except (ValueError, KeyError, TypeError) as e:
            raise PrometheusUnavailable(
                f"Prometheus at {self.url} gave an unreadable targets answer: {redact(str(e))}"
            ) from e
        return [t for t in targets if isinstance(t, dict)] if isinstance(targets, list) else []

    def _sample_spacing(self, series: str, at: datetime | None = None) -> timedelta | None:
        result = self._query(f"{series}[10m]", at)
        gaps: list[float] = []
        for entry in result if isinstance(result, list) else []:
            stamps = [float(v[0]) for v in entry.get("values", [])]
            gaps.extend(b - a for a, b in itertools.pairwise(stamps))
        if not gaps:
            return None
        return timedelta(seconds=round(statistics.median(gaps), 3))

    def _query(self, promql: str, at: datetime | None, timeout: float | None = None) -> Any:
        params: dict[str, Any] = {}
        if at is not None:
            params["time"] = f"{at.timestamp():.3f}"
        seconds = self._timeout if timeout is None else min(timeout, self._timeout)
        try:
            # Prometheus also stops evaluating after `timeout`; the runner bounds the
            # wire (a proxy that trickles its answer resets every per-read timeout).
            return self._runner.call(
                lambda: self._connection.custom_query(
                    promql,
                    params={**params, "timeout": f"{max(1, int(seconds * 1000))}ms"},
                    timeout=seconds,
                ),
                seconds,
            )
        except DeadlineExceeded as e:
            raise PrometheusUnavailable(f"Prometheus at {self.url} timed out: {e}") from e
        except PrometheusApiClientException as e:
            status = _STATUS.search(str(e))
            if status and status.group(1) in ("400", "422"):
                raise QueryError(
                    f"Prometheus rejected the query {promql!r}: {_prometheus_error(e)}"
                ) from e
            raise PrometheusUnavailable(
                f"Prometheus at {self.url} failed: {_prometheus_error(e)}"
            ) from e
        except requests.RequestException as e:
            raise PrometheusUnavailable(
                f"cannot reach Prometheus at {self.url}: {_transport_error(e)}"
            ) from e
        except ValueError as e:  # a proxy or wrong URL answering something that is not JSON
            raise PrometheusUnavailable(
                f"Prometheus at {self.url} gave an unreadable answer: {redact(str(e))}"
            ) from e


def _samples(result: Any, promql: str) -> list[Sample]:
    if not isinstance(result, list) or any(
        not isinstance(r, dict) or "value" not in r for r in result
    ):
        raise QueryError(f"query {promql!r} did not return an instant vector: {result!r:.200}")
    return [(dict(r.get("metric", {})), _number(r["value"][1], promql)) for r in result]


def _single_value(result: Any, promql: str) -> float | None:
    # A scalar result is [timestamp, "value"]; a vector is a list of {metric, value}.
    if isinstance(result, list) and len(result) == 2 and not isinstance(result[0], dict):
        return _number(result[1], promql)
    if not isinstance(result, list):
        raise QueryError(f"query {promql!r} returned an unexpected result: {result!r:.200}")
    if not result:
        return None
    if len(result) > 1:
        labels = [r.get("metric", {}) for r in result[:3]]
        raise QueryError(
            f"query {promql!r} returned {len(result)} series (e.g. {labels}); "
            "aggregate it to one value, e.g. with sum(...)"
        )
    sample = result[0]
    if "value" not in sample:
        raise QueryError(f"query {promql!r} returned a range, not an instant value")
    return _number(sample["value"][1], promql)


def _number(text: Any, promql: str) -> float:
    # Prometheus spells NaN and infinities as strings ("NaN", "+Inf"); float() reads them.
    try:
        return float(text)
    except (TypeError, ValueError) as e:
        raise QueryError(f"query {promql!r} returned a non-number {text!r}") from e
