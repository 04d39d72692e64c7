"""Duration percentiles and failure rates per step and per workflow."""

from __future__ import annotations

from typing import Final

import duckdb

from otel_workflow.model.records import StepStats, TimeArg, WorkflowStats
from otel_workflow.query.timeparse import time_window

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
