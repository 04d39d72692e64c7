"""Helpers shared by the test modules (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import duckdb

from otel_workflow import TraceStore

T = TypeVar("T")


def wait_until(
    probe: Callable[[], T], *, timeout_s: float = 15.0, interval_s: float = 0.02, what: str = ""
) -> T:
    """Call `probe` until it returns a truthy value and return that value; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: T = probe()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout_s}s waiting for {what or probe!r}; last value: {last!r}"
            )
        time.sleep(interval_s)
        last = probe()
    return last


def epoch_us(value: object) -> int:
    """Microseconds since the epoch of a timezone-aware datetime returned by DuckDB."""
    assert isinstance(value, datetime), value
    assert value.tzinfo is not None, value
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def otel_workflow_command() -> list[str]:
    """The installed `otel-workflow` command of the Python running the tests, found without PATH.

    The README's test command runs `.venv/bin/python -m pytest` with the venv not on PATH, so the
    script is looked up beside `sys.executable`; `python -m otel_workflow` is the same CLI otherwise.
    """
    script = Path(sys.executable).with_name("otel-workflow")
    if os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "otel_workflow"]


def refuse_spans_where(db: Path, condition: str) -> None:
    """Add `CHECK (condition)` to the `spans` table of the database at `db` (made if missing), as a user
    could: the database then refuses the spans that fail it, for what they hold."""
    TraceStore(db).close()
    with duckdb.connect(str(db)) as connection:
        [(definition,)] = connection.execute(
            "SELECT sql FROM duckdb_tables() WHERE table_name = 'spans'"
        ).fetchall()
        connection.execute("DROP TABLE spans")
        connection.execute(definition.rstrip().rstrip(";").rstrip(")") + f", CHECK ({condition}))")
