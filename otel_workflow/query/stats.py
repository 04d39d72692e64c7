"""Duration percentiles and failure rates per step and per workflow."""

from __future__ import annotations

import bisect
import math
from datetime import UTC, datetime, timedelta
from typing import Final

import duckdb

from otel_workflow.model.records import SeriesBucket, StatsSeries, StepStats, TimeArg, WorkflowStats
from otel_workflow.query.conditions import Conditions
from otel_workflow.query.timeparse import parse_time

#: The bounds of `step_series(buckets=...)`: a chart of more points than a screen has pixels is waste.
MAX_SERIES_BUCKETS: Final = 500
#: The window of `step_series` when `since` is not given: the day before `until`.
DEFAULT_SERIES_WINDOW: Final = timedelta(hours=24)
# Bucket widths a person reads at a glance (seconds): 1 s ... 30 s, 1 min ... 30 min, 1 h ... 12 h, days.
_ROUND_WIDTHS: Final = (
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200, 86_400,
)  # fmt: skip

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
    where = Conditions()
    where.window("started_at", since, until)
    where.add("status <> 'running'")
    where.equal("workflow_id", workflow_id)
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
            FROM execution_steps{where.sql()}
            GROUP BY workflow_id, step_name
        )
        ORDER BY {order}
        """,
        where.params,
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
    where = Conditions()
    where.window("started_at", since, until)
    where.equal("workflow_id", workflow_id)
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
        FROM workflow_executions{where.sql()}
        GROUP BY workflow_id
        )
        ORDER BY {order}
        """,
        where.params,
    ).fetchall()
    return [WorkflowStats(*row) for row in rows]


def series_bucket_width(window: timedelta, buckets: int) -> int:
    """The bucket width, in seconds, for `window` cut into at most about `buckets` buckets: the smallest
    round width (5 min, 1 h, a whole number of days) at least `window / buckets`."""
    wanted = window.total_seconds() / buckets
    at = bisect.bisect_left(_ROUND_WIDTHS, wanted)
    if at < len(_ROUND_WIDTHS):
        return _ROUND_WIDTHS[at]
    return math.ceil(wanted / 86_400) * 86_400


def step_series(
    connection: duckdb.DuckDBPyConnection,
    *,
    since: TimeArg = None,
    until: TimeArg = None,
    workflow_id: str | None = None,
    step_name: str | None = None,
    buckets: int = 60,
) -> StatsSeries:
    """Ended steps over time: count, failures and duration percentiles per time bucket.

    The window `[since, until)` (default: the 24 hours before now) is cut into buckets of a round
    width (`series_bucket_width`), aligned to multiples of it since the epoch so that a chart polled
    again keeps its buckets; every bucket that overlaps the window is in the answer, empty ones too.
    Steps count in the bucket of their start, and only if they started within the window.
    """
    if not 1 <= buckets <= MAX_SERIES_BUCKETS:
        raise ValueError(f"buckets must be between 1 and {MAX_SERIES_BUCKETS}, not {buckets}")
    end = parse_time(until) or datetime.now(UTC)
    start = parse_time(since) or end - DEFAULT_SERIES_WINDOW
    where = Conditions()
    where.window("started_at", start, end)
    width = series_bucket_width(end - start, buckets)
    where.add("status <> 'running'")
    where.equal("workflow_id", workflow_id)
    where.equal("step_name", step_name)
    rows = connection.execute(
        f"""
        SELECT bucket, count, failed, q[1], q[2], q[3]
        FROM (
            SELECT floor(epoch(started_at) / ?)::BIGINT AS bucket, count(*) AS count,
                   count(*) FILTER (WHERE status = 'failed') AS failed,
                   quantile_cont(CASE WHEN status <> 'skipped' THEN duration_ms END, [0.5, 0.95, 0.99]) AS q
            FROM execution_steps{where.sql()}
            GROUP BY bucket
        )
        """,
        [width, *where.params],
    ).fetchall()
    found = {row[0]: row for row in rows}
    first = math.floor(start.timestamp() / width)
    last = math.ceil(end.timestamp() / width)
    series = []
    for bucket in range(first, max(last, first + 1)):
        _, count, failed, p50, p95, p99 = found.get(bucket, (bucket, 0, 0, None, None, None))
        series.append(
            SeriesBucket(
                start=datetime.fromtimestamp(bucket * width, UTC),
                count=count,
                failed=failed,
                failure_rate=failed / count if count else None,
                p50_ms=p50,
                p95_ms=p95,
                p99_ms=p99,
            )
        )
    return StatsSeries(since=start, until=end, bucket_s=width, series=series)
