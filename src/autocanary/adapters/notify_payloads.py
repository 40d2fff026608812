"""What each alert sink receives: pure functions from an alert to JSON.

No I/O here; :mod:`autocanary.adapters.notify` sends what these build.

Webhook payload, version 1
--------------------------

``POST`` with ``Content-Type: application/json``; one alert per request::

    {
      "version": 1,
      "id": "web-canary.5f7c9d2a.1746100800.7",
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
      "at": "2026-05-01T12:00:00.000Z",
      "checks": [
        {"name": "error-rate", "verdict": "fail", "value": 0.052, "stableValue": 0.001,
         "threshold": "max 1%", "reason": "above max"}
      ]
    }

- ``id``: unique per release and transition. Delivery is at least once (an
  alert is sent again when the daemon cannot know it arrived, e.g. after a
  crash), so a receiver that must act once drops an ``id`` it has seen.
- ``kind``: the transition, one of ``releaseDetected``, ``stepAdvanced``,
  ``analysisFailed``, ``inconclusive``, ``paused``, ``resumed``,
  ``progressDeadlineExceeded``, ``rolledBack``, ``promoted``.
- ``reason``: the matching Kubernetes Event reason.
- ``severity``: ``critical`` (rollback, deadline), ``warning`` (pause, failed
  or inconclusive analysis) or ``info``.
- ``step``: 1-based step number; ``null`` outside the steps.
- ``at``: when the transition happened, RFC 3339 in UTC with milliseconds.
- ``checks``: the analysis interval behind the alert; empty when there was none.
  ``verdict`` is ``pass``, ``fail`` or ``inconclusive``; ``value`` and
  ``stableValue`` are ``null`` when there was no (finite) data.

Within version 1 fields are only ever added, so receivers should ignore fields
they do not know; renaming or removing one increases ``version``.

Slack
-----

An incoming-webhook message: ``text`` is the plain fallback shown in
notifications; one attachment carries the colour bar (red critical, yellow
warning, green info) and Block Kit blocks: the reason and message, the versions
and step, and one line per check.

Alertmanager
------------

A list of one v2 API postable alert (``POST /api/v2/alerts``):

- labels ``alertname`` (``Autocanary`` + reason, e.g. ``AutocanaryRolledBack``),
  ``rollout``, ``namespace``, ``reason``, ``severity``, plus the sink's extra
  labels, which cannot replace these five so routes on them stay reliable;
- annotations ``summary``, ``description`` (the message and every check that
  did not pass), ``kind``, ``revision``, ``canaryVersion``, ``stableVersion``,
  ``step`` (``2/4``, absent outside the steps) and ``id`` (as in the webhook;
  an alert sent twice has the same labels, which Alertmanager merges);
- ``startsAt`` the transition time and ``endsAt`` a lifetime later, by severity
  (:data:`ALERTMANAGER_LIFETIME`). autocanary sends a transition once and never
  resolves it, and Alertmanager resolves an alert without ``endsAt`` after its
  ``resolve_timeout`` (5m by default), which would retire a rollback sooner
  than a release note. So every alert says how long it matters: informational
  ones end soon after Alertmanager has notified, rollbacks stay firing for a day
  unless silenced.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from autocanary.analysis.verdict import CheckSummary
from autocanary.rollout.alert import Alert, Severity

WEBHOOK_PAYLOAD_VERSION = 1

#: How long an alert stays active in Alertmanager after the transition it reports.
ALERTMANAGER_LIFETIME: dict[Severity, timedelta] = {
    "critical": timedelta(hours=24),
    "warning": timedelta(hours=1),
    "info": timedelta(minutes=10),
}

#: Attachment colour bars (Slack's own red, yellow and green).
SLACK_COLOURS: dict[Severity, str] = {
    "critical": "#E01E5A",
    "warning": "#ECB22E",
    "info": "#2EB67D",
}

_VERDICT_EMOJI = {"pass": ":white_check_mark:", "fail": ":x:", "inconclusive": ":grey_question:"}
# Slack rejects a section whose text exceeds 3000 characters.
_SLACK_TEXT_LIMIT = 3000


def rfc3339(at: datetime) -> str:
    """``at`` in UTC as RFC 3339 with milliseconds and a ``Z``; a naive time is taken as UTC."""
    aware = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def webhook_payload(alert: Alert) -> dict[str, Any]:
    """The documented webhook JSON (version 1, see the module docstring) for ``alert``."""
    return {
        "version": WEBHOOK_PAYLOAD_VERSION,
        "id": alert.id,
        "kind": alert.kind,
        "reason": alert.reason,
        "severity": alert.severity,
        "rollout": alert.rollout,
        "namespace": alert.namespace,
        "revision": alert.revision,
        "canaryVersion": alert.canary_version,
        "stableVersion": alert.stable_version,
        "step": alert.step,
        "totalSteps": alert.total_steps,
        "message": alert.message,
        "at": rfc3339(alert.at),
        "checks": [
            {
                "name": check.name,
                "verdict": check.verdict,
                "value": _finite(check.value),
                "stableValue": _finite(check.stable_value),
                "threshold": check.threshold,
                "reason": check.reason,
            }
            for check in alert.checks
        ],
    }


def slack_payload(alert: Alert) -> dict[str, Any]:
    """A Slack incoming-webhook message for ``alert``: fallback text and a coloured attachment."""
    headline = (
        f"*{_slack_escape(alert.reason)}* · `{_slack_escape(alert.namespace)}/"
        f"{_slack_escape(alert.rollout)}`\n{_slack_escape(alert.message)}"
    )
    fields = [
        ("Canary", alert.canary_version),
        ("Stable", alert.stable_version),
        ("Step", _step_text(alert) or "none"),
        ("Severity", alert.severity),
        ("Revision", alert.revision),
    ]
    blocks: list[dict[str, Any]] = [
        _mrkdwn_section(headline),
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*{title}*\n{_slack_escape(value)}"}
                for title, value in fields
            ],
        },
    ]
    if alert.checks:
        lines = [
            f"{_VERDICT_EMOJI[c.verdict]} {_slack_escape(_check_line(c))}" for c in alert.checks
        ]
        blocks.append(_mrkdwn_section("*Checks*\n" + "\n".join(lines)))
    blocks.append(
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": f"autocanary · {rfc3339(alert.at)}"}],
        }
    )
    return {
        "text": _slack_escape(f"[{alert.severity}] {_summary(alert)}: {alert.message}"),
        "attachments": [{"color": SLACK_COLOURS[alert.severity], "blocks": blocks}],
    }


def alertmanager_payload(alert: Alert, extra_labels: Mapping[str, str]) -> list[dict[str, Any]]:
    """Alertmanager v2 postable alerts (a list of one) for ``alert``, plus ``extra_labels``."""
    labels = {
        **extra_labels,
        "alertname": f"Autocanary{alert.reason}",
        "rollout": alert.rollout,
        "namespace": alert.namespace,
        "reason": alert.reason,
        "severity": alert.severity,
    }
    not_passed = [c for c in alert.checks if c.verdict != "pass"]
    description = alert.message
    if not_passed:
        description += "\nChecks that did not pass:\n" + "\n".join(
            f"- {_check_line(c)}" for c in not_passed
        )
    annotations = {
        "summary": _summary(alert),
        "description": description,
        "kind": alert.kind,
        "revision": alert.revision,
        "canaryVersion": alert.canary_version,
        "stableVersion": alert.stable_version,
    }
    if alert.id:
        annotations["id"] = alert.id
    step = _step_text(alert)
    if step is not None:
        annotations["step"] = step
    return [
        {
            "labels": labels,
            "annotations": annotations,
            "startsAt": rfc3339(alert.at),
            "endsAt": rfc3339(alert.at + ALERTMANAGER_LIFETIME[alert.severity]),
        }
    ]


def _summary(alert: Alert) -> str:
    return (
        f"{alert.reason}: {alert.namespace}/{alert.rollout} "
        f"canary {alert.canary_version} (stable {alert.stable_version})"
    )


def _step_text(alert: Alert) -> str | None:
    return None if alert.step is None else f"{alert.step}/{alert.total_steps}"


def _check_line(check: CheckSummary) -> str:
    line = f"{check.name}: {check.verdict}, value {_number(check.value)}"
    if check.stable_value is not None:
        line += f" (stable {_number(check.stable_value)})"
    line += f", threshold {check.threshold}"
    if check.reason:
        line += f": {check.reason}"
    return line


def _finite(value: float | None) -> float | None:
    # JSON has no NaN or Infinity; json.dumps would write them anyway and
    # strict receivers would reject the whole payload.
    return value if value is not None and math.isfinite(value) else None


def _number(value: float | None) -> str:
    return "no data" if _finite(value) is None else f"{value:.4g}"


def _slack_escape(text: str) -> str:
    # The three characters Slack's mrkdwn treats as control characters.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _mrkdwn_section(text: str) -> dict[str, Any]:
    if len(text) > _SLACK_TEXT_LIMIT:
        text = text[: _SLACK_TEXT_LIMIT - 1] + "…"
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}
