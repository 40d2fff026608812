"""Parsing of the human units used in configs: durations (``30s``) and percentages (``10%``).

Parsers raise ``ValueError`` with a message that says what form was expected;
config validation turns those into located problems.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_FORMS = "a duration like 500ms, 30s, 2m or 1h30m"
# A century: far beyond any sensible hold or timeout, and far enough below
# timedelta's and datetime's limits that ``now + duration`` cannot overflow.
_MAX_DAYS = 36500


def parse_duration(value: object) -> timedelta:
    """Parse ``30s``/``2m``/``1h30m``/``500ms`` (or a number of seconds) into a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"expected {_DURATION_FORMS}, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"expected a non-negative duration, got {value!r}")
        return _timedelta(float(value), value)
    if not isinstance(value, str):
        raise ValueError(f"expected {_DURATION_FORMS}, got {value!r}")
    text = value.strip()
    pos = 0
    seconds = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"expected {_DURATION_FORMS}, got {value!r}")
    return _timedelta(seconds, value)


def _timedelta(seconds: float, value: object) -> timedelta:
    # timedelta raises OverflowError for inf and huge values, and a bare
    # ValueError for NaN; both must become a message saying what was expected.
    if not math.isfinite(seconds) or seconds > _MAX_DAYS * 86400:
        raise ValueError(f"expected a duration of at most {_MAX_DAYS}d, got {value!r}")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """Format a timedelta the way Prometheus range selectors accept it (``90s`` -> ``1m30s``)."""
    total_ms = round(delta.total_seconds() * 1000)
    if total_ms <= 0:
        return "0s"
    parts = []
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        count, total_ms = divmod(total_ms, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


# [0-9], not \d: \d matches any Unicode digit, and float() reads full-width "10" as 10.
_PERCENT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*%\s*$")


def parse_percent(value: object) -> float:
    """Parse ``10%`` into the fraction 0.1."""
    if isinstance(value, str):
        match = _PERCENT.match(value)
        if match:
            return float(match.group(1)) / 100.0
    raise ValueError(f"expected a percentage like 10% or 2.5%, got {value!r}")
