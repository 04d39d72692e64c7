"""The read side: the questions people ask of the database, as functions over one DuckDB connection.

`TraceStore` methods open a connection for one call and delegate here, so a
reader holds the file only for the length of one question. Everything returns
plain frozen dataclasses. Times accepted as `since` / `until` are a `datetime`
(naive means local time), a `timedelta` or a duration text (`"90s"`, `"15m"`,
`"1h30m"`, `"7d"`, `"2w"`: that long ago) or an ISO 8601 timestamp text.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple

import duckdb

from otel_workflow.model.records import (
    ExecutionDetail,
    ExecutionRow,
    LogRow,
    PruneReport,
    SpanLine,
    StepRow,
    StepStats,
    WorkflowStats,
)

__all__ = [
    "AmbiguousExecutionId",
    "DurationArg",
    "ExecutionLookupError",
    "ExecutionNotFound",
    "TimeArg",
    "parse_duration",
    "parse_time",
]

TimeArg = datetime | timedelta | str | None
DurationArg = timedelta | str

# -- errors ----------------------------------------------------------------------------------------


class ExecutionLookupError(LookupError):
    """An execution id or prefix that does not name exactly one execution."""


class ExecutionNotFound(ExecutionLookupError):
    """No execution has this id or an id starting with it."""


class AmbiguousExecutionId(ExecutionLookupError):
    """Several executions start with this prefix; `candidates` holds a few of them."""

    def __init__(self, message: str, candidates: Sequence[str]) -> None:
        super().__init__(message)
        self.candidates = list(candidates)


# -- times -----------------------------------------------------------------------------------------

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


def require_module(module: str, feature: str) -> Any:
    """Import an optional library (pandas, polars) only when a feature needs it, or say how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{feature} needs {module}, which is not installed: pip install {module}") from exc


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


def _texts(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _json(value: Any) -> Any:
    """A JSON column's value as Python data (DuckDB hands JSON over as text)."""
    if value is None or not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _columns(row_type: type[Any]) -> str:
    return ", ".join(row_type.__dataclass_fields__)


# -- executions ------------------------------------------------------------------------------------

EXECUTION_STATUSES: Final = ("running", "completed", "failed")


def list_executions(
    connection: duckdb.DuckDBPyConnection,
    *,
    status: str | Sequence[str] | None = None,
    workflow_id: str | Sequence[str] | None = None,
    since: TimeArg = None,
    until: TimeArg = None,
    triggered_by: str | None = None,
    error_contains: str | None = None,
    limit: int | None = 50,
    offset: int = 0,
) -> list[ExecutionRow]:
    """Executions matching every given filter, newest first; `since`/`until` bound the start time."""
    where, params = time_window("started_at", since, until)
    for column, values in (("status", _texts(status)), ("workflow_id", _texts(workflow_id))):
        if values:
            where.append(f"{column} IN ({', '.join('?' for _ in values)})")
            params.extend(values)
    if triggered_by is not None:
        where.append("triggered_by = ?")
        params.append(triggered_by)
    if error_contains:
        # Case-insensitive substring, with no LIKE wildcards to escape.
        where.append("contains(lower(error_message), lower(?))")
        params.append(error_contains)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    columns = _columns(ExecutionRow)
    order = "ORDER BY started_at DESC, id"
    # The newest of each half (ended, running), merged: see the comment on `ended_executions` in schema.py.
    head = "" if limit is None else f" LIMIT {int(limit) + int(offset)}"
    paging = "" if limit is None else f" LIMIT {int(limit)}"
    paging += f" OFFSET {int(offset)}" if offset else ""
    rows = connection.execute(
        f"SELECT {columns} FROM ("
        f"(SELECT {columns} FROM ended_executions {clause} {order}{head}) UNION ALL "
        f"(SELECT {columns} FROM running_executions {clause} {order}{head})"
        f") {order}{paging}",
        params * 2,
    ).fetchall()
    return [ExecutionRow(*row) for row in rows]


def resolve_execution_id(connection: duckdb.DuckDBPyConnection, id_or_prefix: str) -> str:
    """The one execution id equal to, or else starting with, `id_or_prefix`."""
    prefix = _wanted(id_or_prefix)
    # A whole id is a point lookup in the index; only a prefix needs a scan of the ids.
    if connection.execute(_ID_EXISTS, {"id": prefix}).fetchone():
        return prefix
    return _resolve_prefix(connection, prefix)


def _wanted(id_or_prefix: str) -> str:
    prefix = id_or_prefix.strip()
    if not prefix:
        raise ExecutionNotFound("an execution id (or a unique prefix of one) is required")
    return prefix


# `workflow_executions WHERE id = ?` over its two halves, written against their tables: planning the running
# half's view (a join and an aggregate) cost more than the index lookup itself.
_ID_EXISTS: Final = """
SELECT 1 FROM executions WHERE id = $id
UNION ALL
SELECT 1 FROM running_spans WHERE workflow_role = 'execution' AND execution_id = $id
LIMIT 1
"""


def _resolve_prefix(connection: duckdb.DuckDBPyConnection, prefix: str) -> str:
    """The one execution id starting with `prefix`, which is not a whole id (a scan of every id)."""
    rows = connection.execute(
        "SELECT DISTINCT id FROM workflow_executions WHERE starts_with(id, ?) ORDER BY id LIMIT 6", [prefix]
    ).fetchall()
    ids = [row[0] for row in rows]
    if prefix in ids:
        return prefix
    if not ids:
        raise ExecutionNotFound(f"no execution with id {prefix!r} or an id starting with it")
    if len(ids) > 1:
        shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
        raise AmbiguousExecutionId(
            f"{prefix!r} is the start of several execution ids ({shown}): give more characters", ids[:5]
        )
    return str(ids[0])


# Spans of an execution are looked up within its time window (widened for clock skew between services):
# rows are stored roughly in time order, so DuckDB skips the other row groups by their min/max instead of
# scanning every stored id (measured at 10M spans: 172 ms -> a few ms, benchmarks/queries.py).
_SKEW = timedelta(minutes=5)


def _window(started_at: datetime, completed_at: datetime | None) -> tuple[datetime, datetime]:
    return started_at - _SKEW, (completed_at or datetime.now(UTC)) + _SKEW


def list_steps(
    connection: duckdb.DuckDBPyConnection,
    execution_id: str,
    window: tuple[datetime, datetime] | None = None,
) -> list[StepRow]:
    """The steps of one execution in start order (those that started in `window`, when given)."""
    bounded = " AND started_at BETWEEN ? AND ?" if window else ""
    rows = connection.execute(
        f"SELECT {_columns(StepRow)} FROM execution_steps WHERE execution_id = ?{bounded} "
        "ORDER BY started_at, sequence_num, id",
        [execution_id, *(window or ())],
    ).fetchall()
    return [StepRow(*row) for row in rows]


def get_execution(connection: duckdb.DuckDBPyConnection, id_or_prefix: str) -> ExecutionDetail:
    """The execution named by an id or a unique prefix of one, with its steps and waterfall."""
    wanted = _wanted(id_or_prefix)
    # The whole id of an ended execution is one lookup in the index. A running execution is only in the live
    # half of `workflow_executions`, and an id found in neither half is a prefix.
    detail = _ended_execution(connection, wanted)
    indexed = detail is not None
    if detail is None:
        detail = _execution(connection, wanted)
    if detail is None:
        execution_id = _resolve_prefix(connection, wanted)
        detail = _execution(connection, execution_id)
        if detail is None:  # deleted between the two queries
            raise ExecutionNotFound(f"no execution with id {execution_id!r}")
    steps, spans, live_start = _steps_and_waterfall(connection, detail)
    if indexed and live_start is not None and live_start < detail.started_at:
        # A reused id whose earlier run is still going: `workflow_executions` shows that run first.
        detail = _execution(connection, detail.id) or detail
        steps, spans, _ = _steps_and_waterfall(connection, detail)
    return dataclasses.replace(detail, steps=steps, spans=spans)


# The row of `ended_executions` for an id, read from its table: the view's JSON metadata, built and unpacked
# again, took longer to plan than the index lookup takes to run.
_ENDED_EXECUTION: Final = """
SELECT id, workflow_id, status, trigger_type, triggered_by, started_at, completed_at, duration_ms,
       error_message, NULL, trace_id, span_id, service_name, config_version, coalesce(capture_io, false),
       trigger_data::VARCHAR
FROM executions WHERE id = ?
"""

_DETAIL_COLUMNS: Final = (
    "id, workflow_id, status, trigger_type, triggered_by, started_at, completed_at, duration_ms, "
    "error_message, current_step, trace_id, span_id, service_name, metadata ->> 'config_version', "
    "coalesce((metadata ->> 'capture_io')::BOOLEAN, false), trigger_data::VARCHAR"
)


def _ended_execution(connection: duckdb.DuckDBPyConnection, execution_id: str) -> ExecutionDetail | None:
    return _earliest(connection.execute(_ENDED_EXECUTION, [execution_id]).fetchall())


def _execution(connection: duckdb.DuckDBPyConnection, execution_id: str) -> ExecutionDetail | None:
    rows = connection.execute(
        f"SELECT {_DETAIL_COLUMNS} FROM workflow_executions WHERE id = ?", [execution_id]
    ).fetchall()
    return _earliest(rows)


def _earliest(rows: list[tuple[Any, ...]]) -> ExecutionDetail | None:
    # The first run of a reused id. Picked here: `ORDER BY started_at LIMIT 1` in SQL made DuckDB scan every
    # id (a Top-N filter on started_at) instead of looking the id up in the index (10+ ms at 10M spans).
    return ExecutionDetail(*min(rows, key=lambda row: row[5])) if rows else None


# The spans of the execution's trace and the execution's steps, in one statement of three parts: the trace's
# ended spans and the execution's ended steps, each within the time window, and the live rows of the trace
# or of the execution (no anti-join with spans: the writer deletes a live row in the transaction that stores
# its span). Steps are looked up by execution id, as in `execution_steps`, and spans by trace: a step span is
# usually in both, but not always. The columns are raw (the statuses of the views are applied in Python),
# which keeps the statement quick to plan; every part has the columns of `_Row`. At 10M spans this and the
# execution's row take 6-8 ms, where the four queries before took 21 (benchmarks/queries.py).
_TRACE_AND_STEPS: Final = """
SELECT 0, span_id, parent_span_id, name, workflow_role, step_name, kind, service_name, workflow_status,
       status_code, status_message, error_message, start_time, end_time, duration_ms, step_sequence,
       step_type, NULL, NULL, NULL, NULL, NULL, NULL
FROM spans WHERE trace_id = $trace AND start_time BETWEEN $since AND $until
UNION ALL
SELECT 1, span_id, parent_span_id, name, workflow_role, step_name, NULL, service_name, NULL, NULL, NULL,
       NULL, start_time, NULL, NULL, step_sequence, step_type, interrupted_at, trace_id, execution_id,
       parent_step_id, NULL, NULL
FROM running_spans WHERE trace_id = $trace OR execution_id = $execution
UNION ALL
SELECT 2, id, NULL, NULL, 'step', step_name, NULL, NULL, status, NULL, NULL, error_message, started_at,
       completed_at, duration_ms, sequence_num, step_type, NULL, NULL, execution_id, parent_step_id,
       input_data, output_data
FROM steps WHERE execution_id = $execution AND started_at BETWEEN $since AND $until
"""

_ENDED_SPAN, _LIVE, _ENDED_STEP = 0, 1, 2

_INTERRUPTED: Final = "interrupted: the process shut down before this span ended"


class _Row(NamedTuple):
    """A row of `_TRACE_AND_STEPS`, its values as DuckDB returns them."""

    part: Any
    span_id: Any
    parent_span_id: Any
    name: Any
    role: Any
    step_name: Any
    kind: Any
    service_name: Any
    workflow_status: Any
    status_code: Any
    status_message: Any
    error_message: Any
    start_time: Any
    end_time: Any
    duration_ms: Any
    sequence: Any
    step_type: Any
    interrupted_at: Any
    trace_id: Any
    execution_id: Any
    parent_step_id: Any
    input_data: Any
    output_data: Any


def _steps_and_waterfall(
    connection: duckdb.DuckDBPyConnection, detail: ExecutionDetail
) -> tuple[list[StepRow], list[SpanLine], datetime | None]:
    """The execution's steps, its waterfall, and the start of the earliest live row with its id (if any)."""
    since, until = _window(detail.started_at, detail.completed_at)
    rows = connection.execute(
        _TRACE_AND_STEPS, {"trace": detail.trace_id, "execution": detail.id, "since": since, "until": until}
    ).fetchall()
    spans: list[tuple[Any, ...]] = []
    steps: list[StepRow] = []
    live_start: datetime | None = None
    for row in map(_Row._make, rows):
        if row.part == _ENDED_STEP:
            steps.append(_step(row, row.workflow_status, row.error_message))
            continue
        if row.part == _ENDED_SPAN:
            status, error = row.workflow_status, row.error_message
            if row.role is None:  # other instrumentation: failed if its status is ERROR
                status, error = (
                    ("failed", row.status_message) if row.status_code == "ERROR" else ("completed", None)
                )
        else:  # a live row, as the views show it: running, or failed if its process shut down first
            status, error = ("running", None) if row.interrupted_at is None else ("failed", _INTERRUPTED)
            if row.execution_id == detail.id and row.role == "step" and since <= row.start_time <= until:
                steps.append(_step(row, status, error))
            if row.execution_id == detail.id and row.role == "execution":
                live_start = min(live_start or row.start_time, row.start_time)
            if row.trace_id != detail.trace_id:
                continue
        spans.append((*row[1:8], status, row.start_time, row.end_time, row.duration_ms, error, *row[15:17]))
    # The order of `list_steps`: ORDER BY started_at, sequence_num (NULLs last), id.
    steps.sort(key=lambda step: (step.started_at, step.sequence_num is None, step.sequence_num or 0, step.id))
    return steps, _waterfall(spans, detail.span_id, detail.started_at), live_start


def _step(row: _Row, status: str, error: str | None) -> StepRow:
    return StepRow(
        id=row.span_id,
        execution_id=row.execution_id,
        step_name=row.step_name,
        step_type=row.step_type,
        status=status,
        sequence_num=row.sequence,
        parent_step_id=row.parent_step_id,
        started_at=row.start_time,
        completed_at=row.end_time,
        duration_ms=row.duration_ms,
        error_message=error,
        input_data=row.input_data,
        output_data=row.output_data,
    )


def _waterfall(rows: list[tuple[Any, ...]], root_span_id: str, origin: datetime) -> list[SpanLine]:
    # Every span of the trace, ended or still running; the tree is walked from the execution span so
    # that spans of the trace outside it (an HTTP server span above it, another execution) are left out.
    children: dict[str | None, list[tuple[Any, ...]]] = {}
    by_id: dict[str, tuple[Any, ...]] = {}
    for row in rows:
        by_id.setdefault(row[0], row)
        children.setdefault(row[1], []).append(row)
    for siblings in children.values():
        siblings.sort(key=lambda r: (r[8], r[12] if r[12] is not None else 0, r[0]))
    root = by_id.get(root_span_id)
    if root is None:
        return []
    lines: list[SpanLine] = []
    stack: list[tuple[tuple[Any, ...], int]] = [(root, 0)]
    seen: set[str] = set()
    while stack:
        row, depth = stack.pop()
        if row[0] in seen:  # a malformed trace with a parent cycle must not loop forever
            continue
        seen.add(row[0])
        (span_id, parent, name, role, step_name, kind, service, status) = row[:8]
        (start, end, duration, error, seq, stype) = row[8:]
        lines.append(
            SpanLine(
                span_id=span_id,
                parent_span_id=parent,
                depth=depth,
                name=name,
                role=role,
                label=step_name if role == "step" and step_name else name,
                kind=kind,
                service_name=service,
                status=status,
                start_time=start,
                end_time=end,
                offset_ms=(start - origin).total_seconds() * 1000,
                duration_ms=duration,
                error_message=error,
                sequence_num=seq,
                step_type=stype,
            )
        )
        stack.extend((child, depth + 1) for child in reversed(children.get(span_id, [])))
    return lines


# -- logs ------------------------------------------------------------------------------------------


def list_logs(
    connection: duckdb.DuckDBPyConnection,
    execution_id: str | None = None,
    *,
    level: str | Sequence[str] | None = None,
    since: TimeArg = None,
    until: TimeArg = None,
    limit: int | None = None,
) -> list[LogRow]:
    """Log rows in time order; at equal times a start comes before the events and the end of its span."""
    where, params = time_window("created_at", since, until)
    if execution_id is not None:
        where.append("execution_id = ?")
        params.append(execution_id)
    levels = [value.lower() for value in _texts(level)]
    if levels:
        where.append(f"lower(level) IN ({', '.join('?' for _ in levels)})")
        params.extend(levels)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    paging = ""
    if limit is not None:
        paging = " LIMIT ?"
        params.append(limit)
    rows = connection.execute(
        "SELECT id, workflow_id, execution_id, step_id, level, message, module_name, fields::VARCHAR, "
        f"created_at FROM execution_logs {clause} "
        "ORDER BY created_at, CASE WHEN ends_with(id, ':start') THEN 0 WHEN ends_with(id, ':end') THEN 2 "
        f"ELSE 1 END, id{paging}",
        params,
    ).fetchall()
    return [
        LogRow(
            id=row[0],
            workflow_id=row[1],
            execution_id=row[2],
            step_id=row[3],
            level=row[4],
            message=row[5],
            module_name=row[6],
            fields=_json(row[7]),
            created_at=row[8],
        )
        for row in rows
    ]


# -- statistics ------------------------------------------------------------------------------------


STAT_SORTS: Final = {
    "name": "1, 2",
    "count": "count DESC, 1, 2",
    "failures": "failure_rate DESC, failed DESC, 1, 2",
    "p50": "p50_ms DESC NULLS LAST, 1, 2",
    "p95": "p95_ms DESC NULLS LAST, 1, 2",
    "p99": "p99_ms DESC NULLS LAST, 1, 2",
    "max": "max_ms DESC NULLS LAST, 1, 2",
}


def _sort(sort: str) -> str:
    try:
        return STAT_SORTS[sort]
    except KeyError:
        raise ValueError(f"unknown sort {sort!r}: use one of {', '.join(STAT_SORTS)}") from None


def step_stats(
    connection: duckdb.DuckDBPyConnection,
    *,
    workflow_id: str | None = None,
    since: TimeArg = None,
    until: TimeArg = None,
    sort: str = "p95",
) -> list[StepStats]:
    """Count, failures and duration percentiles per workflow and step name."""
    order = _sort(sort)
    where, params = time_window("started_at", since, until)
    where.append("status <> 'running'")
    if workflow_id is not None:
        where.append("workflow_id = ?")
        params.append(workflow_id)
    # One list-quantile aggregate sorts each group's durations once; three separate quantiles (one per
    # percentile) took twice as long over 8M steps (benchmarks/queries.py). NULLs (skipped steps) are
    # ignored by the aggregates.
    rows = connection.execute(
        f"""
        SELECT workflow_id, step_name, count, failed, skipped, failure_rate,
               q[1] AS p50_ms, q[2] AS p95_ms, q[3] AS p99_ms, max_ms
        FROM (
            SELECT workflow_id, step_name, count(*) AS count,
                   count(*) FILTER (WHERE status = 'failed') AS failed,
                   count(*) FILTER (WHERE status = 'skipped') AS skipped,
                   failed / count(*) AS failure_rate,
                   quantile_cont(CASE WHEN status <> 'skipped' THEN duration_ms END, [0.5, 0.95, 0.99]) AS q,
                   max(CASE WHEN status <> 'skipped' THEN duration_ms END) AS max_ms
            FROM execution_steps WHERE {" AND ".join(where)}
            GROUP BY workflow_id, step_name
        )
        ORDER BY {order}
        """,
        params,
    ).fetchall()
    return [StepStats(*row) for row in rows]


def workflow_stats(
    connection: duckdb.DuckDBPyConnection,
    *,
    workflow_id: str | None = None,
    since: TimeArg = None,
    until: TimeArg = None,
    sort: str = "p95",
) -> list[WorkflowStats]:
    """Count, failures, running executions and duration percentiles per workflow."""
    order = _sort(sort).replace("1, 2", "1")
    where, params = time_window("started_at", since, until)
    if workflow_id is not None:
        where.append("workflow_id = ?")
        params.append(workflow_id)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = connection.execute(
        f"""
        SELECT workflow_id, count, failed, running, failure_rate,
               q[1] AS p50_ms, q[2] AS p95_ms, q[3] AS p99_ms, max_ms
        FROM (
        SELECT workflow_id,
               count(*) FILTER (WHERE status <> 'running') AS count,
               count(*) FILTER (WHERE status = 'failed') AS failed,
               count(*) FILTER (WHERE status = 'running') AS running,
               coalesce(failed / nullif(count, 0), 0) AS failure_rate,
               quantile_cont(duration_ms, [0.5, 0.95, 0.99]) AS q,
               max(duration_ms) AS max_ms
        FROM workflow_executions {clause}
        GROUP BY workflow_id
        )
        ORDER BY {order}
        """,
        params,
    ).fetchall()
    return [WorkflowStats(*row) for row in rows]


# -- retention -------------------------------------------------------------------------------------


def prune(connection: duckdb.DuckDBPyConnection, cutoff: datetime, *, dry_run: bool = False) -> PruneReport:
    """Delete every trace whose last activity is before `cutoff`, with its events, links and live rows.

    Runs in one transaction on a read-write connection; the derived counts
    (executions, steps, logs) are the difference of the views before and after.
    """
    connection.execute("BEGIN TRANSACTION")
    try:
        connection.execute(
            """
            CREATE OR REPLACE TEMP TABLE _prune_traces AS
            SELECT trace_id FROM (
                SELECT trace_id, end_time AS happened FROM spans
                UNION ALL
                SELECT trace_id, coalesce(interrupted_at, start_time) FROM running_spans
            )
            GROUP BY trace_id HAVING max(happened) < ?
            """,
            [cutoff],
        )
        derived = (
            "SELECT (SELECT count(*) FROM workflow_executions), (SELECT count(*) FROM execution_steps), "
            "(SELECT count(*) FROM execution_logs)"
        )
        before = connection.execute(derived).fetchone() or (0, 0, 0)
        traces = _count(connection, "SELECT count(*) FROM _prune_traces")
        removed: dict[str, int] = {}
        for table in ("span_events", "span_links", "running_spans", "executions", "steps", "spans"):
            removed[table] = _count(
                connection, f"DELETE FROM {table} WHERE trace_id IN (SELECT trace_id FROM _prune_traces)"
            )
        after = connection.execute(derived).fetchone() or (0, 0, 0)
        connection.execute("DROP TABLE _prune_traces")
        connection.execute("ROLLBACK" if dry_run else "COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return PruneReport(
        cutoff=cutoff,
        dry_run=dry_run,
        traces=traces,
        executions=before[0] - after[0],
        steps=before[1] - after[1],
        logs=before[2] - after[2],
        spans=removed["spans"],
        span_events=removed["span_events"],
        span_links=removed["span_links"],
        running_spans=removed["running_spans"],
    )


def _count(connection: duckdb.DuckDBPyConnection, query: str) -> int:
    row = connection.execute(query).fetchone()
    return 0 if row is None else int(row[0])
