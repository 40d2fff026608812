"""The README's examples and references are checked against the code, so they cannot drift."""

from __future__ import annotations

import json
import re
import shlex
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import BaseModel

from autocanary.adapters.notify_payloads import webhook_payload
from autocanary.analysis.verdict import CheckSummary
from autocanary.cli import _parser
from autocanary.config import models as cfg
from autocanary.config.loader import parse_config
from autocanary.config.models import AlertKind
from autocanary.daemon.metrics import DaemonMetrics
from autocanary.rollout.alert import Alert
from autocanary.rollout.state import Reason

README = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_every_yaml_config_in_the_readme_is_valid() -> None:
    configs = [b for b in _blocks("yaml") if "rollouts:" in b]
    assert configs, "the README shows at least one config"
    for block in configs:
        parse_config(block, "README.md")


@pytest.mark.parametrize(
    "model",
    [
        cfg.PrometheusConfig,
        cfg.AlertmanagerSink,
        cfg.DaemonConfig,
        cfg.LeaderElectionConfig,
        cfg.RolloutConfig,
        cfg.AnalysisConfig,
        cfg.AppMetricsConfig,
        cfg.CheckConfig,
        cfg.RelativeThreshold,
        cfg.SequentialAnalysisConfig,
    ],
)
def test_the_config_reference_documents_every_key(model: type[BaseModel]) -> None:
    missing = [
        alias
        for name, field in model.model_fields.items()
        if f"`{(alias := field.alias or name)}" not in README and f".{alias}`" not in README
    ]
    assert not missing, f"{model.__name__} keys missing from the README reference: {missing}"


def test_every_cli_command_in_the_readme_exists() -> None:
    subparsers = next(a for a in _parser()._actions if a.dest == "command")
    known = set(subparsers.choices)  # type: ignore[arg-type]
    mentioned = set()
    for line in re.findall(r"^autocanary ([a-z|]+)", README, flags=re.M):
        mentioned.update(line.split("|"))
    assert mentioned, "the README lists CLI commands"
    assert mentioned <= known, f"documented but missing: {sorted(mentioned - known)}"
    assert known <= mentioned, f"undocumented commands: {sorted(known - mentioned)}"


def test_the_webhook_example_has_the_payload_fields() -> None:
    example = json.loads(next(b for b in _blocks("json") if '"kind"' in b))
    alert = Alert(
        kind=AlertKind.ROLLED_BACK,
        reason=Reason.ROLLED_BACK,
        rollout="r",
        namespace="n",
        revision="abc",
        canary_version="v2",
        stable_version="v1",
        step=1,
        total_steps=4,
        message="m",
        at=datetime(2026, 1, 1, tzinfo=UTC),
        checks=(CheckSummary("error-rate", "fail", 0.1, "<= 0.02"),),
    )
    payload = webhook_payload(alert)
    assert set(example) == set(payload)
    assert set(example["checks"][0]) == set(payload["checks"][0])


def test_every_documented_metric_is_exported() -> None:
    exported = {family.name for family in DaemonMetrics().registry.collect()}
    table = README.split("## Metrics", 1)[1].split("The probe exports", 1)[0]
    documented = set(re.findall(r"`(autocanary_[a-z_]+)`", table))
    assert documented
    for name in documented:
        assert name.removesuffix("_total") in exported, name


def test_every_shown_command_line_parses_as_written() -> None:
    # As a shell would split it: an unquoted value with a space becomes two arguments.
    lines = re.findall(r"^\$ (autocanary .*)$", README, flags=re.M)
    assert lines, "the README shows example command lines"
    for line in lines:
        argv = [word for word in shlex.split(line)[1:] if word != "..."]
        try:
            _parser().parse_args(argv)
        except SystemExit as e:
            raise AssertionError(f"the README's command line does not parse: {line}") from e
