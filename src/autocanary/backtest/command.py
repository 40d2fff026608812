"""``autocanary backtest``: the command line over :func:`autocanary.backtest.run.backtest`."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from autocanary.adapters.prometheus import PrometheusClient
from autocanary.adapters.prometheus_history import PrometheusHistory
from autocanary.backtest.errors import BacktestInputError
from autocanary.backtest.render import report_text, table_text
from autocanary.backtest.report import Release
from autocanary.backtest.run import backtest
from autocanary.backtest.windows import load_releases, make_release
from autocanary.config.loader import load_config
from autocanary.config.models import PrometheusConfig
from autocanary.config.redact import redact

_SINGLE = ("start", "end", "canary_version", "stable_version")
_FLAGS = {
    "start": "--from",
    "end": "--to",
    "canary_version": "--canary-version",
    "stable_version": "--stable-version",
}


def releases_from_args(args: argparse.Namespace, now: datetime) -> list[Release]:
    """The releases to replay: ``--releases FILE``, or the one window the flags describe."""
    given = [name for name in _SINGLE if getattr(args, name, None)]
    if args.releases:
        if given:
            flags = ", ".join(_FLAGS[n] for n in given)
            raise BacktestInputError(f"--releases replaces {flags}: give one or the other")
        return load_releases(args.releases, now)
    missing = [_FLAGS[n] for n in _SINGLE if n not in given]
    if missing:
        raise BacktestInputError(
            f"missing {', '.join(missing)}: give --from, --to, --canary-version and "
            "--stable-version, or --releases FILE"
        )
    return [
        make_release(
            args.release_name,
            args.start,
            args.end,
            canary_version=args.canary_version,
            stable_version=args.stable_version,
            now=now,
        )
    ]


def run(args: argparse.Namespace) -> int:
    """Run the backtest the parsed arguments describe; print it; 0 when it ran."""
    now = datetime.now(UTC)
    config = load_config(args.config)
    rollout = args.rollout
    if rollout is None:
        if len(config.rollouts) != 1:
            names = ", ".join(r.name for r in config.rollouts)
            raise BacktestInputError(f"--rollout is needed: the config has several ({names})")
        rollout = config.rollouts[0].name
    releases = releases_from_args(args, now)
    prometheus = config.prometheus
    if args.prometheus:
        try:
            prometheus = PrometheusConfig.model_validate(
                {**prometheus.model_dump(by_alias=True), "url": args.prometheus}
            )
        except ValidationError as e:
            message = str(e.errors()[0]["msg"]).removeprefix("Value error, ")
            raise BacktestInputError(f"--prometheus: {message}") from e
    client = PrometheusClient(prometheus)
    try:
        with PrometheusHistory(prometheus) as history:
            report = backtest(
                config,
                rollout,
                releases,
                source=client,
                history=history,
                now=now,
                set_specs=args.set,
                replicas=args.replicas,
                prometheus=redact(prometheus.url),
                scrapes=client,
            )
    finally:
        client.close()
    if args.output == "json":
        sys.stdout.write(report.to_json() + "\n")
    elif args.output == "table":
        sys.stdout.write(table_text(report) + "\n")
    else:
        sys.stdout.write(report_text(report))
    if args.plot:
        from autocanary.backtest.plot import plot_report

        written = plot_report(report, Path(args.plot))
        print(f"plot written to {written}", file=sys.stderr)
    return 0
