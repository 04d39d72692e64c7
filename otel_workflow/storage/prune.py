"""Retention: deleting the traces in which nothing happened since a cutoff, with what derives from them."""

from __future__ import annotations

from datetime import datetime

import duckdb

from otel_workflow.model.records import PruneReport


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
        for table in ("span_events", "span_links", "running_spans", "executions", "spans"):
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
