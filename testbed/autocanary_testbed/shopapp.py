"""shopapp: a demo service instrumented the way real Python services are, to release in the bed.

A FastAPI app served by uvicorn, with its Prometheus metrics from
prometheus-fastapi-instrumentator left at the library's defaults, so what
autocanary reads are that library's names and labels, not ours:

- ``http_requests_total{handler, method, status}``, status grouped into
  classes (``2xx``, ``5xx``);
- ``http_request_duration_seconds{handler, method}`` (buckets 0.1, 0.5, 1)
  and ``http_request_duration_highr_seconds`` (many buckets, no labels).

It never names its version in its answers (``GET /`` answers a small JSON
document about an item); which version a series belongs to is for Prometheus
to say, from the pod's labels. ``/healthz`` and ``/metrics`` are not counted.

It lives in the test bed, not beside ``testpage``: it stands in for *your*
application, whose image autocanary never ships; putting it in the product
would pull FastAPI and uvicorn into the daemon's image for no use there.

The faults are testpage's, from the same environment variables and parsed by
the same code (``FAULT_ERROR_RATE``, ``FAULT_LATENCY``, ``FAULT_AFTER``,
``FAULT_SEED``; see :mod:`autocanary.apps.testpage`): an invalid value stops the
start with exit status 2. Run it as ``python -m autocanary_testbed.shopapp``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections.abc import Sequence

import uvicorn
from fastapi import FastAPI, Response
from prometheus_fastapi_instrumentator import Instrumentator

from autocanary.apps.testpage import Settings, settings_from_env
from autocanary.errors import ConfigError

#: Not the application's traffic: health checks and scrapes (excluded as services do).
EXCLUDED_HANDLERS = ["/healthz", "/metrics"]


def create_app(settings: Settings) -> FastAPI:
    """The app with ``settings``' faults on ``GET /``, instrumented with the library's defaults."""
    app = FastAPI(title="shopapp")
    faults = settings.faults
    started = time.monotonic()
    # Not for security: the fault draw only needs to be uniform and cheap.
    rng = random.Random(faults.seed)  # noqa: S311

    @app.get("/")
    async def item() -> Response:
        if time.monotonic() - started >= faults.after_s:
            delay = faults.delay(rng)
            if delay > 0:
                await asyncio.sleep(delay)
            if faults.error_rate > 0 and rng.random() < faults.error_rate:
                return Response('{"error": "internal"}', 500, media_type="application/json")
        return Response('{"item": 42, "price": "9.99"}', media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response("ok", media_type="text/plain")

    Instrumentator(excluded_handlers=EXCLUDED_HANDLERS).instrument(app).expose(app)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM; 2 for an invalid environment."""
    parser = argparse.ArgumentParser(prog="shopapp", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on")
    args = parser.parse_args(argv)
    try:
        settings = settings_from_env(os.environ)
    except ConfigError as e:
        parser.exit(2, f"shopapp: invalid environment:\n{e}\n")
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
