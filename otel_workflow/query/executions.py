"""Executions and their steps: the list with filters, one execution with its waterfall, id lookup.

Functions over one DuckDB connection: `TraceStore` opens a connection for one call and delegates
here, so a reader holds the file only for the length of one question.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple

import duckdb

from otel_workflow.model.errors import AmbiguousExecutionId, ExecutionNotFound
from otel_workflow.model.records import ExecutionDetail, ExecutionFilter, ExecutionRow, SpanLine, StepRow
from otel_workflow.query.conditions import Conditions
from otel_workflow.query.traces import TreeRow, ended_status, live_status, span_lines


def _columns(row_type: type[Any]) -> str:
    return ", ".join(row_type.__dataclass_fields__)


EXECUTION_STATUSES: Final = ("running", "completed", "failed")


def list_executions(
    connection: duckdb.DuckDBPyConnection, where: ExecutionFilter, *, limit: int | None = 50, offset: int = 0
) -> list[ExecutionRow]:
    """Executions matching `where`, newest first; `limit=None` returns all."""
    conditions = Conditions()
    conditions.window("started_at", where.since, where.until)
    for column in ExecutionFilter.MANY:
        conditions.one_of(column, where.values(column))
    conditions.equal("triggered_by", where.triggered_by)
    if where.error_contains:
        # Case-insensitive substring, with no LIKE wildcards to escape.
        conditions.add("contains(lower(error_message), lower(?))", where.error_contains)
    clause = conditions.sql()
    columns = _columns(ExecutionRow)
    order = "ORDER BY started_at DESC, id"
    # The newest of each half (ended, running), merged: see the comment on `ended_executions` in schema.py.
    head = "" if limit is None else f" LIMIT {int(limit) + int(offset)}"
    paging = "" if limit is None else f" LIMIT {int(limit)}"
    paging += f" OFFSET {int(offset)}" if offset else ""
    rows = connection.execute(
        f"SELECT {columns} FROM ("
        f"(SELECT {columns} FROM ended_executions{clause} {order}{head}) UNION ALL "
        f"(SELECT {columns} FROM running_executions{clause} {order}{head})"
        f") {order}{paging}",
        conditions.params * 2,
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


# The runs of an id: ended ones through the index, running ones (or interrupted) from their live rows.
_EXECUTION_TIMES: Final = """
SELECT started_at, completed_at FROM executions WHERE id = $1
UNION ALL
SELECT start_time, NULL FROM running_spans WHERE workflow_role = 'execution' AND execution_id = $1
"""


def execution_window(connection: duckdb.DuckDBPyConnection, execution_id: str) -> tuple[datetime, datetime]:
    """When the rows of an execution (exact id) are looked for: its start to its end (now while it runs),
    widened by the clock skew allowed between services; of a reused id, from the earliest run.
    Raises `ExecutionNotFound`."""
    rows = connection.execute(_EXECUTION_TIMES, [execution_id]).fetchall()
    if not rows:
        raise ExecutionNotFound(f"no execution with id {execution_id!r}")
    windows = [_window(started_at, completed_at) for started_at, completed_at in rows]
    since = min(window[0] for window in windows)
    until = max(window[1] for window in windows)
    return since, until


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
       error_message, NULL, trace_id, service_name, span_id, config_version, coalesce(capture_io, false),
       trigger_data::VARCHAR
FROM executions WHERE id = ?
"""

_DETAIL_COLUMNS: Final = (
    "id, workflow_id, status, trigger_type, triggered_by, started_at, completed_at, duration_ms, "
    "error_message, current_step, trace_id, service_name, span_id, metadata ->> 'config_version', "
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
    spans: list[TreeRow] = []
    steps: list[StepRow] = []
    live_start: datetime | None = None
    for row in map(_Row._make, rows):
        if row.part == _ENDED_STEP:
            steps.append(_step(row, row.workflow_status, row.error_message))
            continue
        if row.part == _ENDED_SPAN:
            status, error = ended_status(
                row.role, row.workflow_status, row.error_message, row.status_code, row.status_message
            )
        else:
            status, error = live_status(row.interrupted_at)
            if row.execution_id == detail.id and row.role == "step" and since <= row.start_time <= until:
                steps.append(_step(row, status, error))
            if row.execution_id == detail.id and row.role == "execution":
                live_start = min(live_start or row.start_time, row.start_time)
            if row.trace_id != detail.trace_id:
                continue
        spans.append(
            TreeRow(*row[1:8], status, row.start_time, row.end_time, row.duration_ms, error, *row[15:17])
        )
    # The order of `list_steps`: ORDER BY started_at, sequence_num (NULLs last), id.
    steps.sort(key=lambda step: (step.started_at, step.sequence_num is None, step.sequence_num or 0, step.id))
    # The tree is walked from the execution span, so that spans of the trace outside it (an HTTP server span
    # above it, another execution) are left out.
    root = next((span for span in spans if span.span_id == detail.span_id), None)
    return steps, span_lines(spans, [root] if root else [], detail.started_at), live_start


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
