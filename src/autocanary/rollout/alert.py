"""What an alert says: the typed message every sink renders in its own format."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from autocanary.analysis.verdict import CheckSummary
from autocanary.config.models import AlertKind
from autocanary.rollout.state import Reason

Severity = Literal["critical", "warning", "info"]

#: How urgent each kind of transition is; rollbacks wake people up.
SEVERITY: dict[AlertKind, Severity] = {
    AlertKind.ROLLED_BACK: "critical",
    AlertKind.PROGRESS_DEADLINE_EXCEEDED: "critical",
    AlertKind.PAUSED: "warning",
    AlertKind.ANALYSIS_FAILED: "warning",
    AlertKind.INCONCLUSIVE: "warning",
    AlertKind.RELEASE_DETECTED: "info",
    AlertKind.STEP_ADVANCED: "info",
    AlertKind.RESUMED: "info",
    AlertKind.PROMOTED: "info",
}


@dataclass(frozen=True)
class Alert:
    """A rollout transition worth telling people about."""

    kind: AlertKind
    reason: Reason  # the Kubernetes Event reason
    rollout: str
    namespace: str
    revision: str
    canary_version: str
    stable_version: str
    step: int | None  # 1-based step number, None outside the steps
    total_steps: int
    message: str
    at: datetime
    checks: tuple[CheckSummary, ...] = field(default=())
    #: Unique per release and transition; the same alert sent again (after a
    #: crash, say) carries the same id, so receivers can drop the repeat.
    id: str = ""

    def log_fields(self) -> dict[str, object]:
        """What every log line about this alert's rollout carries."""
        return {
            "rollout": self.rollout,
            "namespace": self.namespace,
            "revision": self.revision,
            "step": self.step,
        }

    @property
    def severity(self) -> Severity:
        """How urgent this alert is."""
        return SEVERITY[self.kind]
