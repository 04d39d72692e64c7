"""Ready-made SQL for the questions people ask most, as DuckDB table macros stored in the database.

They are created with the schema (`schema.ensure_schema`), so they work from any
DuckDB client on the file, from `TraceStore.sql()` and from `otel-workflow sql`:

`slowest_executions(n := 10, workflow := NULL, since := NULL, until := NULL)`
    The `n` longest ended executions (optionally of one workflow, started in
    the window), with their slowest top-level step.

`failure_rate_over_time(bucket := INTERVAL '1 hour', workflow := NULL, since := NULL, until := NULL)`
    Ended executions per workflow and time bucket (UTC-aligned), with the
    failed count and the failure rate.

`critical_path(execution)`
    The spans of one execution (exact id) that determined its end time: from
    the execution span, the child that ended last, then recursively the
    sibling that ended last before that one started, and so on, into every
    span on the path. `self_ms` is the span's time not covered by a child on
    the path, i.e. where the time went.

`step_p95_shift(baseline_since, baseline_until, current_since, current_until, min_runs := 1)`
    Steps whose p95 duration moved between two windows, largest relative
    change first (steps run at least `min_runs` times in both windows).

Arguments named with `:=` are optional; times are TIMESTAMPTZ values or text,
e.g. `SELECT * FROM step_p95_shift(now() - INTERVAL 14 DAY, now() - INTERVAL 7 DAY,
now() - INTERVAL 7 DAY, now())`.
"""

from __future__ import annotations

from typing import Final

import duckdb

__all__ = ["MACROS", "create_analytics"]

_SLOWEST_EXECUTIONS: Final = """
CREATE OR REPLACE MACRO slowest_executions(n := 10, workflow := NULL, since := NULL, until := NULL) AS TABLE
SELECT e.id, e.workflow_id, e.status, e.started_at, e.duration_ms, e.trigger_type, e.triggered_by,
       e.error_message, s.step_name AS slowest_step, s.duration_ms AS slowest_step_ms, e.trace_id
FROM workflow_executions e
LEFT JOIN (
    SELECT execution_id, arg_max(step_name, duration_ms) AS step_name, max(duration_ms) AS duration_ms
    FROM execution_steps
    WHERE parent_step_id IS NULL AND duration_ms IS NOT NULL
    GROUP BY execution_id
) s ON s.execution_id = e.id
WHERE e.duration_ms IS NOT NULL
  AND (workflow IS NULL OR e.workflow_id = workflow)
  AND (since IS NULL OR e.started_at >= since)
  AND (until IS NULL OR e.started_at < until)
ORDER BY e.duration_ms DESC, e.id
LIMIT n
"""

_FAILURE_RATE_OVER_TIME: Final = """
CREATE OR REPLACE MACRO failure_rate_over_time(
    bucket := INTERVAL '1 hour', workflow := NULL, since := NULL, until := NULL
) AS TABLE
SELECT workflow_id,
       time_bucket(bucket, started_at) AS bucket_start,
       count(*) AS executions,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE status = 'failed') / count(*) AS failure_rate
FROM workflow_executions
WHERE status <> 'running'
  AND (workflow IS NULL OR workflow_id = workflow)
  AND (since IS NULL OR started_at >= since)
  AND (until IS NULL OR started_at < until)
GROUP BY workflow_id, bucket_start
ORDER BY workflow_id, bucket_start
"""

# The critical path is defined by two kinds of edges between ended spans of the execution's trace:
# parent -> the child that ended last, and span -> the sibling that ended last before it started.
# Everything reachable from the execution span along them is on the path.
_CRITICAL_PATH: Final = """
CREATE OR REPLACE MACRO critical_path(execution) AS TABLE
WITH RECURSIVE
root AS (
    SELECT trace_id, span_id FROM spans
    WHERE workflow_role = 'execution' AND execution_id = execution
    ORDER BY start_time LIMIT 1
),
tree AS (SELECT s.* FROM spans s JOIN root r ON s.trace_id = r.trace_id),
edges AS (
    SELECT parent_span_id AS source, arg_max(span_id, end_time) AS target, 1 AS deeper
    FROM tree WHERE parent_span_id IS NOT NULL
    GROUP BY parent_span_id
    UNION ALL
    SELECT a.span_id,
           (SELECT arg_max(b.span_id, b.end_time) FROM tree b
            WHERE b.parent_span_id = a.parent_span_id AND b.span_id <> a.span_id
              AND b.end_time <= a.start_time),
           0
    FROM tree a WHERE a.span_id <> (SELECT span_id FROM root)
),
path(span_id, depth) AS (
    SELECT span_id, 0 FROM root
    UNION
    SELECT e.target, p.depth + e.deeper FROM path p JOIN edges e ON e.source = p.span_id
    WHERE e.target IS NOT NULL
)
SELECT t.span_id, t.parent_span_id, p.depth, t.name, t.step_name, t.workflow_role, t.start_time, t.end_time,
       t.duration_ms,
       greatest(t.duration_ms - coalesce((
           SELECT sum(c.duration_ms) FROM tree c JOIN path cp ON cp.span_id = c.span_id
           WHERE c.parent_span_id = t.span_id), 0), 0) AS self_ms
FROM path p JOIN tree t ON t.span_id = p.span_id
ORDER BY t.start_time, p.depth
"""

_STEP_P95_SHIFT: Final = """
CREATE OR REPLACE MACRO step_p95_shift(
    baseline_since, baseline_until, current_since, current_until, min_runs := 1
) AS TABLE
WITH windows AS (
    SELECT workflow_id, step_name,
           count(*) FILTER (WHERE started_at >= baseline_since AND started_at < baseline_until)
               AS baseline_runs,
           count(*) FILTER (WHERE started_at >= current_since AND started_at < current_until)
               AS current_runs,
           quantile_cont(duration_ms, 0.95)
               FILTER (WHERE started_at >= baseline_since AND started_at < baseline_until) AS baseline_p95_ms,
           quantile_cont(duration_ms, 0.95)
               FILTER (WHERE started_at >= current_since AND started_at < current_until) AS current_p95_ms
    FROM execution_steps
    WHERE duration_ms IS NOT NULL AND status NOT IN ('running', 'skipped')
    GROUP BY workflow_id, step_name
)
SELECT workflow_id, step_name, baseline_runs, current_runs, baseline_p95_ms, current_p95_ms,
       current_p95_ms - baseline_p95_ms AS change_ms,
       (current_p95_ms - baseline_p95_ms) / nullif(baseline_p95_ms, 0) AS change_ratio
FROM windows
WHERE baseline_runs >= min_runs AND current_runs >= min_runs
ORDER BY abs(change_ratio) DESC NULLS LAST, abs(change_ms) DESC, workflow_id, step_name
"""

#: Macro name -> its CREATE statement.
MACROS: Final = {
    "slowest_executions": _SLOWEST_EXECUTIONS,
    "failure_rate_over_time": _FAILURE_RATE_OVER_TIME,
    "critical_path": _CRITICAL_PATH,
    "step_p95_shift": _STEP_P95_SHIFT,
}


def create_analytics(connection: duckdb.DuckDBPyConnection) -> None:
    """Create (or replace) the ready-made macros; needs the tables and views of the schema."""
    for statement in MACROS.values():
        connection.execute(statement)
