"""Times and durations as people type them, and the SQL conditions of a time window.

`since` / `until` are a `datetime` (naive means local time), a `timedelta` or a duration text
(`"90s"`, `"15m"`, `"1h30m"`, `"7d"`, `"2w"`: that long ago) or an ISO 8601 timestamp text.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from otel_workflow.model.records import DurationArg, TimeArg

_UNITS: Final = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_DURATION: Final = re.compile(r"^\s*(?:\d+(?:\.\d+)?\s*(?:ms|s|m|h|d|w)\s*)+$", re.IGNORECASE)


def parse_duration(text: str) -> timedelta:
    """`"90s"`, `"15m"`, `"1h30m"`, `"7d"`, `"2w"` as a timedelta; ValueError on anything else."""
    if not _DURATION.match(text):
        raise ValueError(f"{text!r} is not a duration: use a number and a unit, like 30m, 1h, 7d or 1h30m")
    seconds = sum(float(n) * _UNITS[unit.lower()] for n, unit in _DURATION_PART.findall(text))
    return timedelta(seconds=seconds)


def parse_time(value: TimeArg, *, now: datetime | None = None) -> datetime | None:
    """A point in time, timezone-aware: durations count back from `now`, naive times are local."""
    if value is None:
        return None
    now = now or datetime.now(UTC)
    if isinstance(value, timedelta):
        return now - value
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.astimezone()
    text = value.strip()
    if _DURATION.match(text):
        return now - parse_duration(text)
    try:
        moment = datetime.fromisoformat(text.replace(" ", "T", 1) if " " in text else text)
    except ValueError:
        raise ValueError(
            f"{value!r} is neither a duration (30m, 1h, 7d) nor an ISO timestamp (2024-05-01T12:00:00Z)"
        ) from None
    # A naive timestamp is read in the local time zone, as it was most likely typed in a local terminal.
    return moment if moment.tzinfo is not None else moment.astimezone()


def cutoff(older_than: DurationArg, *, now: datetime | None = None) -> datetime:
    """The moment `older_than` (a positive timedelta or duration text) before `now`."""
    age = parse_duration(older_than) if isinstance(older_than, str) else older_than
    if age <= timedelta(0):
        raise ValueError(f"the age must be a positive duration, not {older_than!r}")
    return (now or datetime.now(UTC)) - age


def time_window(column: str, since: TimeArg, until: TimeArg) -> tuple[list[str], list[Any]]:
    """SQL conditions (and their parameters) keeping `column` in `[since, until)`."""
    start, end = parse_time(since), parse_time(until)
    if start is not None and end is not None and start >= end:
        raise ValueError(
            f"the window is empty: since ({start.isoformat()}) is not before until ({end.isoformat()})"
        )
    where: list[str] = []
    params: list[Any] = []
    if start is not None:
        where.append(f"{column} >= ?")
        params.append(start)
    if end is not None:
        where.append(f"{column} < ?")
        params.append(end)
    return where, params
