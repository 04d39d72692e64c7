"""The records the read side returns: rows of the tables and views of DESIGN.md, as frozen dataclasses.

The store, the queries, the CLI and the server all speak these; this module depends on nothing of
the package, so any of them can import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

__all__ = [
    "ColumnInfo",
    "DurationArg",
    "ExecutionDetail",
    "ExecutionFilter",
    "ExecutionRow",
    "LogRow",
    "PruneReport",
    "SeriesBucket",
    "SpanDetail",
    "SpanEvent",
    "SpanLine",
    "SpanLink",
    "StatsSeries",
    "StepRow",
    "StepStats",
    "TableInfo",
    "TimeArg",
    "WorkflowStats",
]

#: A point in time as the read side takes it: a datetime, a timedelta (that long ago), or text
#: (`"1h"`, `"7d"`, an ISO timestamp); None: unbounded. See `query.timeparse`.
TimeArg = datetime | timedelta | str | None
#: An age: a timedelta or a duration text (`"7d"`).
DurationArg = timedelta | str


@dataclass(frozen=True, slots=True)
class ExecutionFilter:
    """Which executions to list; every condition given must hold (the store, the CLI and the server).

    `status` and `workflow_id` take one value or several (any of them matches); `since` / `until`
    bound the start time; `error_contains` matches the error message without regard to case.
    """

    status: str | Sequence[str] | None = None
    workflow_id: str | Sequence[str] | None = None
    since: TimeArg = None
    until: TimeArg = None
    triggered_by: str | None = None
    error_contains: str | None = None

    #: The conditions that take several values (a repeated query parameter or option).
    MANY: ClassVar[tuple[str, ...]] = ("status", "workflow_id")

    def values(self, name: str) -> list[str]:
        """The values of a condition of `MANY`, as a list (empty: no condition)."""
        value = getattr(self, name)
        if value is None:
            return []
        return [value] if isinstance(value, str) else list(value)


@dataclass(frozen=True, slots=True)
class ExecutionRow:
    """One row of `workflow_executions`."""

    id: str
    workflow_id: str | None
    status: str
    trigger_type: str | None
    triggered_by: str | None
    started_at: datetime
    completed_at: datetime | None
    duration_ms: float | None
    error_message: str | None
    current_step: str | None
    trace_id: str
    service_name: str | None


@dataclass(frozen=True, slots=True)
class StepRow:
    """One row of `execution_steps`."""

    id: str
    execution_id: str
    step_name: str
    step_type: str | None
    status: str
    sequence_num: int | None
    parent_step_id: str | None
    started_at: datetime
    completed_at: datetime | None
    duration_ms: float | None
    error_message: str | None
    input_data: str | None
    output_data: str | None


@dataclass(frozen=True, slots=True)
class SpanLine:
    """One line of a waterfall: of an execution (the spans under the execution span, itself included)
    or of a whole trace (every span; `depth` counts from its root).

    `role` is `execution`, `step`, or None for spans of other instrumentation
    (HTTP clients, database calls). `status` uses the step vocabulary for all:
    a plain span is `completed` unless its status is ERROR (`failed`).
    `offset_ms` counts from the start of the execution (of a trace: of its
    earliest span); `end_time` and `duration_ms` are None while the span runs.
    """

    span_id: str
    parent_span_id: str | None
    depth: int
    name: str
    role: str | None
    label: str
    kind: str | None
    service_name: str | None
    status: str
    start_time: datetime
    end_time: datetime | None
    offset_ms: float
    duration_ms: float | None
    error_message: str | None
    sequence_num: int | None
    step_type: str | None


@dataclass(frozen=True, slots=True)
class SpanEvent:
    """An event of a span (`span_events`), its attributes as Python data."""

    name: str
    timestamp: datetime
    attributes: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SpanLink:
    """A link of a span to another span (`span_links`): the linked span's ids and the link's attributes."""

    trace_id: str
    span_id: str
    attributes: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SpanDetail:
    """One span as stored: its `spans` row with the JSON columns as Python data, its events and links.

    A span still running is only a live row (`running`: True): what is known when a span starts (ids,
    name, start, service, the workflow columns); `end_time`, `duration_ms` and the status are None, the
    attributes, events and links empty. `interrupted_at` is when a clean shutdown found it still running.
    """

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str | None
    service_name: str | None
    start_time: datetime
    end_time: datetime | None
    duration_ms: float | None
    status_code: str | None
    status_message: str | None
    scope_name: str | None
    scope_version: str | None
    attributes: dict[str, Any]
    resource_attributes: dict[str, Any]
    events: list[SpanEvent]
    links: list[SpanLink]
    dropped_attributes: int
    dropped_events: int
    dropped_links: int
    running: bool
    interrupted_at: datetime | None
    workflow_role: str | None
    execution_id: str | None
    workflow_id: str | None
    step_name: str | None
    step_type: str | None
    step_sequence: int | None


@dataclass(frozen=True, slots=True)
class ExecutionDetail(ExecutionRow):
    """One execution: its `workflow_executions` row, then what only the detail has: the execution
    span's id, configuration, `trigger_data`, its steps, and its waterfall of spans.

    `input_data` / `output_data` of the steps, and `trigger_data`, are JSON
    texts, None unless I/O capture was on for the execution.
    """

    span_id: str
    config_version: str | None
    capture_io: bool
    trigger_data: str | None
    steps: list[StepRow] = field(default_factory=list)
    spans: list[SpanLine] = field(default_factory=list)

    @property
    def elapsed_ms(self) -> float:
        """The duration, or for a running execution the time since it started."""
        if self.duration_ms is not None:
            return self.duration_ms
        return (datetime.now(UTC) - self.started_at).total_seconds() * 1000


@dataclass(frozen=True, slots=True)
class LogRow:
    """One row of `execution_logs`; `fields` is the row's JSON object as Python data."""

    id: str
    workflow_id: str | None
    execution_id: str
    step_id: str | None
    level: str
    message: str
    module_name: str | None
    fields: Any
    created_at: datetime


@dataclass(frozen=True, slots=True)
class StepStats:
    """Per workflow and step name, over the ended steps that started in the window.

    `failure_rate` is `failed / count`. Durations are percentiles in
    milliseconds over the steps that ran (skipped ones are left out, since
    they take no time and would pull the percentiles down).
    """

    workflow_id: str | None
    step_name: str
    count: int
    failed: int
    skipped: int
    failure_rate: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None


@dataclass(frozen=True, slots=True)
class WorkflowStats:
    """Per workflow, over the executions that started in the window; `running` ones are not in `count`."""

    workflow_id: str | None
    count: int
    failed: int
    running: int
    failure_rate: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None


@dataclass(frozen=True, slots=True)
class SeriesBucket:
    """One time bucket of a `StatsSeries`: the ended steps that started in `[start, start + bucket_s)`.

    As `StepStats`: `failure_rate` is `failed / count` (None when the bucket is empty) and the
    percentiles leave skipped steps out.
    """

    start: datetime
    count: int
    failed: int
    failure_rate: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True, slots=True)
class StatsSeries:
    """Step statistics over time: `[since, until)` cut into buckets of `bucket_s` seconds, every one of
    them in `series` (empty ones too), oldest first."""

    since: datetime
    until: datetime
    bucket_s: float
    series: list[SeriesBucket]


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    """A column of a table or view: its name and its DuckDB type (`VARCHAR`, `TIMESTAMP WITH TIME ZONE`)."""

    name: str
    type: str


@dataclass(frozen=True, slots=True)
class TableInfo:
    """A table or view the SQL sandbox can query; `kind` is `table` or `view`."""

    name: str
    kind: str
    columns: list[ColumnInfo]


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What `prune` removed (or, with `dry_run`, would remove).

    Whole traces go, so an execution never loses part of its steps: a trace
    is removed when nothing in it happened after the cutoff (its spans' end
    times and its live rows' start or interruption times are all earlier).
    """

    cutoff: datetime
    dry_run: bool
    traces: int
    executions: int
    steps: int
    logs: int
    spans: int
    span_events: int
    span_links: int
    running_spans: int
