"""What Prometheus can say about its history: retention, and which series a window holds.

Queries go through :mod:`autocanary.adapters.prometheus`, as in the daemon; this adds
the status API, which that client does not offer. Every call has the
configured timeout; transport failures become :class:`PrometheusUnavailable`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self

import httpx

from autocanary.adapters.prometheus import PrometheusClient, auth_headers
from autocanary.config.models import PrometheusConfig
from autocanary.config.redact import redact
from autocanary.errors import PrometheusUnavailable
from autocanary.promql import Sample

_PROM_DURATION = re.compile(r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_UNITS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1)


def parse_prometheus_duration(text: str) -> timedelta | None:
    """A Prometheus duration (``15d``, ``100y``, ``1w2d``) as a timedelta; None if not one."""
    match = _PROM_DURATION.match(text.strip())
    if not match or not any(match.groups()):
        return None
    seconds = sum(int(g) * unit for g, unit in zip(match.groups(), _UNITS, strict=True) if g)
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class Retention:
    """How long Prometheus keeps samples, as it reports it (``15d``, ``15d or 512MiB``)."""

    text: str
    time: timedelta | None  # None: no time limit known (size-only, or not reported)


class PrometheusHistory:
    """Label-aware instant queries and the status API of one Prometheus."""

    def __init__(self, cfg: PrometheusConfig) -> None:
        """Prepare clients for ``cfg.url`` with its timeout and bearer token."""
        #: For messages: credentials in the URL (user:password@) are never shown.
        self.url = redact(cfg.url)
        self._queries = PrometheusClient(cfg)
        self._http = httpx.Client(
            base_url=cfg.url, headers=auth_headers(cfg), timeout=cfg.timeout.total_seconds()
        )

    def close(self) -> None:
        """Release the HTTP connections."""
        self._queries.close()
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _get(self, path: str, params: dict[str, str] | None = None) -> httpx.Response:
        try:
            return self._http.get(path, params=params)
        except httpx.HTTPError as e:
            raise PrometheusUnavailable(
                f"cannot reach Prometheus at {self.url}: {redact(str(e))}"
            ) from e

    def vector(self, promql: str, at: datetime) -> list[Sample]:
        """Evaluate ``promql`` at ``at``: each series' labels and value."""
        return self._queries.query_vector(promql, at)

    def retention(self) -> Retention | None:
        """The retention Prometheus applies; None when it does not say (e.g. not Prometheus)."""
        response = self._get("/api/v1/status/runtimeinfo")
        if response.is_success:
            text = str((_json(response, self.url).get("data") or {}).get("storageRetention", ""))
            if text:
                times = [parse_prometheus_duration(part) for part in text.split(" or ")]
                known = [t for t in times if t is not None]
                return Retention(text, min(known) if known else None)
        response = self._get("/api/v1/status/flags")
        if response.is_success:
            flags = _json(response, self.url).get("data") or {}
            text = str(flags.get("storage.tsdb.retention.time", ""))
            time = parse_prometheus_duration(text)
            if time:  # "0s" means the default, which runtimeinfo would have told
                return Retention(text, time)
        return None


def _json(response: httpx.Response, url: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as e:
        raise PrometheusUnavailable(
            f"Prometheus at {url} gave an unreadable answer (HTTP {response.status_code}): {e}"
        ) from e
    if not isinstance(body, dict):
        raise PrometheusUnavailable(f"Prometheus at {url} gave an unexpected answer: {body!r:.200}")
    return body
