"""The log rows of `execution_logs` (starts and ends, span events, application log records), in time
order; and the SELECT that defines the view (`storage.schema` makes the view of it)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import duckdb

from otel_workflow.model.records import LogRow, TimeArg
from otel_workflow.query.conditions import Conditions


def list_logs(
    connection: duckdb.DuckDBPyConnection,
    execution_id: str | None = None,
    *,
    level: str | Sequence[str] | None = None,
    step_id: str | None = None,
    step_name: str | None = None,
    since: TimeArg = None,
    until: TimeArg = None,
    limit: int | None = None,
    within: tuple[datetime, datetime] | None = None,
) -> list[LogRow]:
    """Log rows in time order; at equal times a start comes before the events and the end of its span.

    `step_id` keeps the rows of one step (the step span's id): its start, its events, its log records
    and its end; `step_name` those of every step of that name (all attempts of a retried step).
    `within` bounds the row time as well, and with `execution_id` it is the execution's window: its
    events are then those of its spans that started in it (as its waterfall's), and DuckDB reads the row
    groups of that time instead of every stored span (at 10M spans: 110 -> 40 ms, benchmarks/queries.py).
    """
    scoped, source, params = "", "execution_logs", []
    if within is not None and execution_id is not None:
        # The execution's spans once, as a CTE: the SELECT reads them for its events and its log records.
        scoped = (
            "WITH scoped_spans AS "
            "(SELECT * FROM spans WHERE execution_id = ? AND start_time BETWEEN ? AND ?) "
        )
        source, params = f"({execution_logs_select('scoped_spans')})", [execution_id, *within]
    where = Conditions()
    where.window("created_at", since, until)
    if within is not None:
        where.add("created_at BETWEEN ? AND ?", *within)
    where.equal("execution_id", execution_id)
    where.equal("step_id", step_id)
    if step_name is not None:
        where.add("step_id IS NOT NULL AND module_name = ?", step_name)
    where.one_of("lower(level)", [value.lower() for value in _texts(level)])
    params.extend(where.params)
    paging = ""
    if limit is not None:
        paging = " LIMIT ?"
        params.append(limit)
    rows = connection.execute(
        f"{scoped}SELECT id, workflow_id, execution_id, step_id, level, message, module_name, "
        f"fields::VARCHAR, created_at FROM {source}{where.sql()} "
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


# -- the execution_logs view -----------------------------------------------------------------------


def execution_logs_select(spans: str) -> str:
    """The SELECT of the `execution_logs` view, the spans of its events and log records read from the
    relation `spans`.

    The view reads `spans`; the read side gives one execution's spans within its time window (a
    subquery), which DuckDB cannot derive from a filter on the view: the join of every event to its
    span then reads a few row groups instead of every stored span.
    """
    return f"""
SELECT span_id || ':start' AS id,
       workflow_id,
       execution_id,
       CASE WHEN workflow_role = 'step' THEN span_id END AS step_id,
       'info' AS level,
       CASE WHEN workflow_role = 'execution'
            THEN 'Execution started: ' || coalesce(workflow_id, 'workflow')
            ELSE 'Step started: ' || step_name END AS message,
       step_name AS module_name,
       json_object('trace_id', trace_id, 'span_id', span_id) AS fields,
       started_at AS created_at
FROM workflow_spans
WHERE execution_id IS NOT NULL
UNION ALL
SELECT span_id || ':end',
       workflow_id,
       execution_id,
       CASE WHEN workflow_role = 'step' THEN span_id END,
       CASE WHEN status = 'failed' THEN 'error' ELSE 'info' END,
       CASE WHEN workflow_role = 'execution' THEN
            CASE WHEN status = 'failed'
                 THEN 'Execution failed: ' || coalesce(workflow_id, 'workflow')
                      || coalesce(': ' || error_message, '')
                 ELSE printf('Execution completed: %s (%.1fms)', coalesce(workflow_id, 'workflow'),
                             duration_ms) END
       ELSE
            CASE status
                 WHEN 'failed' THEN 'Step failed: ' || step_name || coalesce(': ' || error_message, '')
                 WHEN 'skipped' THEN 'Step skipped: ' || step_name
                 WHEN 'compensated' THEN 'Step compensated: ' || step_name
                 ELSE printf('Step completed: %s (%.1fms)', step_name, duration_ms) END
       END,
       step_name,
       json_object('trace_id', trace_id, 'span_id', span_id, 'status', status,
                   'duration_ms', duration_ms),
       ended_at
-- The time of an end row: its end, or its start for a live row that was interrupted. Two branches, not
-- coalesce(completed_at, started_at): a time condition then reaches each table's own time column and DuckDB
-- skips the row groups outside it (one execution's rows at 10M spans: 72 -> 27 ms, benchmarks/queries.py).
FROM (
    SELECT *, completed_at AS ended_at FROM workflow_spans WHERE completed_at IS NOT NULL
    UNION ALL
    SELECT *, started_at FROM workflow_spans WHERE completed_at IS NULL AND status <> 'running'
)
WHERE execution_id IS NOT NULL
UNION ALL
SELECT ev.span_id || ':' || ev.event_index,
       s.workflow_id,
       s.execution_id,
       CASE WHEN s.workflow_role = 'step' THEN s.span_id END,
       CASE WHEN ev.name = 'exception' THEN 'error'
            ELSE lower(coalesce(ev.attributes ->> 'log.severity', ev.attributes ->> 'severity',
                                ev.attributes ->> 'level', 'event')) END,
       CASE WHEN ev.name = 'exception'
                 THEN coalesce(ev.attributes ->> 'exception.type', 'exception')
                      || coalesce(': ' || (ev.attributes ->> 'exception.message'), '')
            WHEN ev.name = 'workflow.step.input' THEN 'Step input recorded'
            WHEN ev.name = 'workflow.step.output' THEN 'Step output recorded'
            WHEN ev.name = 'workflow.execution.input' THEN 'Execution input recorded'
            ELSE coalesce(ev.attributes ->> 'message', ev.attributes ->> 'log.message', ev.name) END,
       s.step_name,
       -- I/O events say that a payload was recorded and how big it is, never what it holds.
       CASE WHEN json_exists(ev.attributes, '$."workflow.io.json"')
            THEN json_object('bytes', strlen(ev.attributes ->> 'workflow.io.json'))
            ELSE ev.attributes END,
       ev.timestamp
FROM span_events ev
JOIN {spans} s ON s.trace_id = ev.trace_id AND s.span_id = ev.span_id
WHERE s.workflow_role IS NOT NULL AND s.execution_id IS NOT NULL
UNION ALL
-- Application log records emitted while an execution or step span was current (in this process, or by
-- another service with the same ids): joined when read, so a record stored before its span still finds it.
SELECT 'log:' || l.id,
       s.workflow_id,
       s.execution_id,
       CASE WHEN s.workflow_role = 'step' THEN s.span_id END,
       CASE WHEN l.severity_number IS NULL THEN coalesce(lower(l.severity_text), 'info')
            WHEN l.severity_number <= 8 THEN 'debug'
            WHEN l.severity_number <= 12 THEN 'info'
            WHEN l.severity_number <= 16 THEN 'warning'
            WHEN l.severity_number <= 20 THEN 'error'
            ELSE 'critical' END,
       CASE WHEN json_type(l.body) = 'VARCHAR' THEN l.body ->> '$' ELSE coalesce(l.body::VARCHAR, '') END,
       s.step_name,
       json_merge_patch(coalesce(l.attributes, '{{}}'),
                        json_object('logger', l.scope_name, 'trace_id', l.trace_id, 'span_id', l.span_id)),
       l.time
FROM log_records l
JOIN (
    SELECT trace_id, span_id, workflow_role, execution_id, workflow_id, step_name
    FROM {spans} WHERE workflow_role IS NOT NULL
    UNION ALL
    SELECT trace_id, span_id, workflow_role, execution_id, workflow_id, step_name FROM running_spans
) s ON s.trace_id = l.trace_id AND s.span_id = l.span_id
WHERE s.execution_id IS NOT NULL
"""
