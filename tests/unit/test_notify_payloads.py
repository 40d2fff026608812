"""The JSON each alert sink receives: webhook (documented, versioned), Slack, Alertmanager v2."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from autocanary.adapters.notify import alertmanager_payload, slack_payload, webhook_payload
from autocanary.adapters.notify_payloads import rfc3339
from autocanary.analysis.verdict import CheckSummary
from autocanary.config.models import AlertKind
from autocanary.rollout.alert import Alert
from autocanary.rollout.state import Reason

AT = datetime(2026, 5, 1, 12, 0, 0, 250_000, tzinfo=UTC)

ROLLED_BACK = Alert(
    kind=AlertKind.ROLLED_BACK,
    reason=Reason.ROLLED_BACK,
    rollout="checkout",
    namespace="shop",
    revision="5f7c9d2a",
    canary_version="v2",
    stable_version="v1",
    step=2,
    total_steps=4,
    message="error-rate failed 3 intervals in a row (limit 2)",
    at=AT,
    checks=(
        CheckSummary(
            name="error-rate",
            verdict="fail",
            value=0.052,
            threshold="max 1%",
            stable_value=0.001,
            reason="above max",
        ),
        CheckSummary(name="latency", verdict="pass", value=0.12, threshold="max 500ms"),
        CheckSummary(
            name="request-rate",
            verdict="inconclusive",
            value=math.nan,
            threshold="min 1",
            reason="no data",
        ),
    ),
    id="checkout.5f7c9d2a.3.1746100800250",
)

PROMOTED = replace(
    ROLLED_BACK, kind=AlertKind.PROMOTED, reason=Reason.PROMOTED, step=None, checks=()
)


def test_webhook_payload_is_the_documented_version_1_shape() -> None:
    assert webhook_payload(ROLLED_BACK) == {
        "version": 1,
        "id": "checkout.5f7c9d2a.3.1746100800250",
        "kind": "rolledBack",
        "reason": "RolledBack",
        "severity": "critical",
        "rollout": "checkout",
        "namespace": "shop",
        "revision": "5f7c9d2a",
        "canaryVersion": "v2",
        "stableVersion": "v1",
        "step": 2,
        "totalSteps": 4,
        "message": "error-rate failed 3 intervals in a row (limit 2)",
        "at": "2026-05-01T12:00:00.250Z",
        "checks": [
            {
                "name": "error-rate",
                "verdict": "fail",
                "value": 0.052,
                "stableValue": 0.001,
                "threshold": "max 1%",
                "reason": "above max",
            },
            {
                "name": "latency",
                "verdict": "pass",
                "value": 0.12,
                "stableValue": None,
                "threshold": "max 500ms",
                "reason": "",
            },
            {
                "name": "request-rate",
                "verdict": "inconclusive",
                "value": None,
                "stableValue": None,
                "threshold": "min 1",
                "reason": "no data",
            },
        ],
    }


def test_webhook_payload_outside_steps_has_null_step_and_no_checks() -> None:
    payload = webhook_payload(PROMOTED)
    assert payload["step"] is None
    assert payload["checks"] == []
    assert payload["severity"] == "info"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_values_become_null_so_the_json_is_strict(value: float) -> None:
    check = CheckSummary(name="x", verdict="inconclusive", value=value, threshold="max 1")
    alert = replace(ROLLED_BACK, checks=(check,))
    for payload in (webhook_payload(alert), slack_payload(alert), alertmanager_payload(alert, {})):
        # allow_nan=False raises on NaN/Infinity, which strict JSON parsers reject.
        json.dumps(payload, allow_nan=False)
    assert webhook_payload(alert)["checks"][0]["value"] is None


def test_rfc3339_converts_to_utc_and_treats_naive_times_as_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert rfc3339(datetime(2026, 5, 1, 14, 0, tzinfo=plus_two)) == "2026-05-01T12:00:00.000Z"
    assert rfc3339(datetime(2026, 5, 1, 12, 0)) == "2026-05-01T12:00:00.000Z"


def test_slack_payload_has_fallback_text_coloured_attachment_and_checks() -> None:
    payload = slack_payload(ROLLED_BACK)
    assert payload["text"] == (
        "[critical] RolledBack: shop/checkout canary v2 (stable v1): "
        "error-rate failed 3 intervals in a row (limit 2)"
    )
    (attachment,) = payload["attachments"]
    assert attachment["color"] == "#E01E5A"
    blocks = attachment["blocks"]
    assert [b["type"] for b in blocks] == ["section", "section", "section", "context"]
    assert blocks[0]["text"] == {
        "type": "mrkdwn",
        "text": "*RolledBack* · `shop/checkout`\nerror-rate failed 3 intervals in a row (limit 2)",
    }
    fields = [f["text"] for f in blocks[1]["fields"]]
    assert fields == [
        "*Canary*\nv2",
        "*Stable*\nv1",
        "*Step*\n2/4",
        "*Severity*\ncritical",
        "*Revision*\n5f7c9d2a",
    ]
    assert blocks[2]["text"]["text"].splitlines() == [
        "*Checks*",
        ":x: error-rate: fail, value 0.052 (stable 0.001), threshold max 1%: above max",
        ":white_check_mark: latency: pass, value 0.12, threshold max 500ms",
        ":grey_question: request-rate: inconclusive, value no data, threshold min 1: no data",
    ]
    assert blocks[3]["elements"][0]["text"] == "autocanary · 2026-05-01T12:00:00.250Z"


@pytest.mark.parametrize(
    ("kind", "reason", "colour"),
    [
        ("progressDeadlineExceeded", "ProgressDeadlineExceeded", "#E01E5A"),
        ("paused", "Paused", "#ECB22E"),
        ("analysisFailed", "AnalysisFailed", "#ECB22E"),
        ("promoted", "Promoted", "#2EB67D"),
        ("stepAdvanced", "StepAdvanced", "#2EB67D"),
    ],
)
def test_slack_colour_follows_severity(kind: str, reason: str, colour: str) -> None:
    alert = replace(ROLLED_BACK, kind=kind, reason=reason)  # type: ignore[arg-type]
    assert slack_payload(alert)["attachments"][0]["color"] == colour


def test_slack_payload_without_checks_or_step() -> None:
    blocks = slack_payload(PROMOTED)["attachments"][0]["blocks"]
    assert [b["type"] for b in blocks] == ["section", "section", "context"]
    assert "*Step*\nnone" in [f["text"] for f in blocks[1]["fields"]]


def test_slack_escapes_control_characters_and_truncates_long_sections() -> None:
    alert = replace(ROLLED_BACK, message="<!channel> a & b " + "x" * 4000)
    payload = slack_payload(alert)
    assert payload["text"].startswith(
        "[critical] RolledBack: shop/checkout canary v2 (stable v1): &lt;!channel&gt; a &amp; b"
    )
    headline = payload["attachments"][0]["blocks"][0]["text"]["text"]
    assert "<!channel>" not in headline
    assert len(headline) == 3000
    assert headline.endswith("…")


def test_alertmanager_payload_labels_annotations_and_times() -> None:
    (posted,) = alertmanager_payload(ROLLED_BACK, {"team": "payments"})
    assert posted["labels"] == {
        "alertname": "AutocanaryRolledBack",
        "rollout": "checkout",
        "namespace": "shop",
        "reason": "RolledBack",
        "severity": "critical",
        "team": "payments",
    }
    assert posted["annotations"] == {
        "summary": "RolledBack: shop/checkout canary v2 (stable v1)",
        "description": (
            "error-rate failed 3 intervals in a row (limit 2)\n"
            "Checks that did not pass:\n"
            "- error-rate: fail, value 0.052 (stable 0.001), threshold max 1%: above max\n"
            "- request-rate: inconclusive, value no data, threshold min 1: no data"
        ),
        "kind": "rolledBack",
        "revision": "5f7c9d2a",
        "id": "checkout.5f7c9d2a.3.1746100800250",
        "canaryVersion": "v2",
        "stableVersion": "v1",
        "step": "2/4",
    }
    assert posted["startsAt"] == "2026-05-01T12:00:00.250Z"
    assert posted["endsAt"] == "2026-05-02T12:00:00.250Z"


def test_alertmanager_extra_labels_cannot_replace_the_routing_labels() -> None:
    extra = {"severity": "info", "rollout": "other", "alertname": "X", "cluster": "eu-1"}
    (posted,) = alertmanager_payload(ROLLED_BACK, extra)
    assert posted["labels"]["severity"] == "critical"
    assert posted["labels"]["rollout"] == "checkout"
    assert posted["labels"]["alertname"] == "AutocanaryRolledBack"
    assert posted["labels"]["cluster"] == "eu-1"


@pytest.mark.parametrize(
    ("kind", "reason", "lifetime"),
    [
        ("rolledBack", "RolledBack", timedelta(hours=24)),
        ("paused", "Paused", timedelta(hours=1)),
        ("promoted", "Promoted", timedelta(minutes=10)),
        ("releaseDetected", "ReleaseDetected", timedelta(minutes=10)),
    ],
)
def test_alertmanager_alerts_end_after_a_lifetime_by_severity(
    kind: str, reason: str, lifetime: timedelta
) -> None:
    alert = replace(ROLLED_BACK, kind=kind, reason=reason)  # type: ignore[arg-type]
    (posted,) = alertmanager_payload(alert, {})
    assert posted["endsAt"] == rfc3339(AT + lifetime)


def test_alertmanager_payload_without_step_or_failing_checks() -> None:
    (posted,) = alertmanager_payload(PROMOTED, {})
    assert "step" not in posted["annotations"]
    assert posted["annotations"]["description"] == PROMOTED.message
    assert posted["labels"]["alertname"] == "AutocanaryPromoted"
