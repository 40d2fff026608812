"""Which past releases to replay: ``--from/--to`` and the versions, or a small YAML file.

Times are ISO 8601 (``2025-03-01T14:00:00Z``; without a zone, UTC), Unix
seconds, ``now``, or ``now-2h`` (any duration autocanary accepts). A releases
file is a list of windows::

    - name: v3                      # optional; default: the canary version
      from: 2025-03-01T14:00:00Z
      to: 2025-03-01T14:30:00Z
      canaryVersion: v3
      stableVersion: v2
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from autocanary.backtest.errors import BacktestInputError
from autocanary.backtest.report import Release
from autocanary.config.units import parse_duration

_RELATIVE = re.compile(r"^now\s*(?:-\s*(?P<ago>\S+))?$")
_TIME_FORMS = "an ISO 8601 time (2025-03-01T14:00:00Z), Unix seconds, 'now' or 'now-2h'"


def parse_time(value: object, now: datetime) -> datetime:
    """A timezone-aware UTC time from one of the accepted forms; ``ValueError`` otherwise."""
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected {_TIME_FORMS}, got {value!r}")
    text = value.strip()
    relative = _RELATIVE.match(text)
    if relative:
        ago = relative.group("ago")
        try:
            return now - parse_duration(ago) if ago else now
        except ValueError as e:
            raise ValueError(f"in {text!r}: {e}") from None
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return datetime.fromtimestamp(float(text), UTC)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected {_TIME_FORMS}, got {value!r}") from None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def make_release(
    name: str | None,
    start: object,
    end: object,
    *,
    canary_version: str,
    stable_version: str,
    now: datetime,
) -> Release:
    """A validated :class:`Release`; :class:`BacktestInputError` saying what is wrong."""
    label = name or canary_version
    try:
        begins, ends = parse_time(start, now), parse_time(end, now)
    except ValueError as e:
        raise BacktestInputError(f"release {label!r}: {e}") from None
    if ends <= begins:
        raise BacktestInputError(
            f"release {label!r}: the window ends ({ends.isoformat()}) before it starts "
            f"({begins.isoformat()}); --to must be later than --from"
        )
    if ends > now:
        raise BacktestInputError(
            f"release {label!r}: the window ends in the future ({ends.isoformat()}, now is "
            f"{now.isoformat(timespec='seconds')}); there is no history there yet: use --to now"
        )
    if not canary_version.strip() or not stable_version.strip():
        raise BacktestInputError(f"release {label!r}: canary and stable versions must be named")
    if canary_version == stable_version:
        raise BacktestInputError(
            f"release {label!r}: the canary and the stable have the same version "
            f"{canary_version!r}; the daemon sees no release then"
        )
    return Release(label, begins, ends, canary_version, stable_version)


def _time_text(value: object) -> object:
    # YAML reads an unquoted timestamp as a datetime already; keep every form as given.
    return value.isoformat() if isinstance(value, datetime) else value


_Time = Annotated[str | int | float, BeforeValidator(_time_text)]


class _ReleaseEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    name: str | None = None
    start: _Time = Field(alias="from")
    end: _Time = Field(alias="to")
    canary_version: str
    stable_version: str


def load_releases(path: str | Path, now: datetime) -> list[Release]:
    """Read a releases file (a YAML list of windows); :class:`BacktestInputError` on problems."""
    file = Path(path)
    try:
        data: Any = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as e:
        raise BacktestInputError(f"cannot read releases file {file}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise BacktestInputError(f"releases file {file} is not valid YAML: {e}") from e
    if not isinstance(data, list) or not data:
        raise BacktestInputError(
            f"releases file {file}: expected a non-empty list of "
            "{name, from, to, canaryVersion, stableVersion}"
        )
    releases = []
    for index, item in enumerate(data):
        try:
            entry = _ReleaseEntry.model_validate(item)
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'entry'}: {err['msg']}"
                for err in e.errors()
            )
            raise BacktestInputError(f"releases file {file}, entry {index + 1}: {problems}") from e
        releases.append(
            make_release(
                entry.name,
                entry.start,
                entry.end,
                canary_version=entry.canary_version,
                stable_version=entry.stable_version,
                now=now,
            )
        )
    names = [r.name for r in releases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise BacktestInputError(
            f"releases file {file}: duplicate release name(s) {duplicates}; give each a 'name'"
        )
    return releases
