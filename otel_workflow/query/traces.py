"""Any trace, workflow or not, as a waterfall of all its spans; one span with everything stored of it.

The tree walk and the statuses are shared with `executions`: an execution's waterfall is the part of
its trace under the execution span, in the same order and with the same step vocabulary.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final, NamedTuple

import duckdb

from otel_workflow.model.errors import SpanNotFound, TraceNotFound
from otel_workflow.model.jsonvalues import json_object
from otel_workflow.model.records import SpanDetail, SpanEvent, SpanLine, SpanLink

__all__ = [
    "INTERRUPTED",
    "TreeRow",
    "ended_status",
    "get_span",
    "get_trace",
    "live_status",
    "span_id_of",
    "span_lines",
    "trace_id_of",
]

#: The error of a live row whose process shut down before its span ended (the views say the same).
INTERRUPTED: Final = "interrupted: the process shut down before this span ended"

_HEX: Final = re.compile(r"[0-9a-f]+")


def trace_id_of(text: str) -> str:
    """`text` as a trace id: 32 hexadecimal digits, in lower case; ValueError otherwise."""
    return _hex_id(text, 32, "trace id")


def span_id_of(text: str) -> str:
    """`text` as a span id: 16 hexadecimal digits, in lower case; ValueError otherwise."""
    return _hex_id(text, 16, "span id")


def _hex_id(text: str, digits: int, what: str) -> str:
    value = text.strip().lower()
    if len(value) != digits or not _HEX.fullmatch(value):
        raise ValueError(f"{text!r} is not a {what}: a {what} is {digits} hexadecimal digits")
    return value


# -- statuses, in the step vocabulary ------------------------------------------------------------------


def ended_status(
    role: str | None,
    workflow_status: str,
    error_message: str | None,
    status_code: str | None,
    status_message: str | None,
) -> tuple[str, str | None]:
    """The status and error of an ended span: an execution's or a step's own (set at ingest); for spans of
    other instrumentation `failed` with the status message if the status is ERROR, else `completed`."""
    if role is None:
        return ("failed", status_message) if status_code == "ERROR" else ("completed", None)
    return workflow_status, error_message


def live_status(interrupted_at: datetime | None) -> tuple[str, str | None]:
    """The status and error of a live row, as the views show it: running, or failed if its process shut
    down first."""
    return ("running", None) if interrupted_at is None else ("failed", INTERRUPTED)


# -- the tree walk ------------------------------------------------------------------------------------


class TreeRow(NamedTuple):
    """A span as a waterfall line needs it, its status already in the step vocabulary."""

    span_id: str
    parent_span_id: str | None
    name: str
    role: str | None
    step_name: str | None
    kind: str | None
    service_name: str | None
    status: str
    start_time: datetime
    end_time: datetime | None
    duration_ms: float | None
    error_message: str | None
    sequence_num: int | None
    step_type: str | None


def _order(row: TreeRow) -> tuple[datetime, int, str]:
    # Start time, then the step number (steps started in the same microsecond), then the id: a stable order.
    return row.start_time, row.sequence_num if row.sequence_num is not None else 0, row.span_id


def span_lines(rows: Iterable[TreeRow], roots: Iterable[TreeRow], origin: datetime) -> list[SpanLine]:
    """The spans of `rows` under each of `roots` in turn, depth first, children in start order.

    Each span id is shown once, the first time it is reached: a root already shown under an earlier
    root is passed over, and a parent cycle (a malformed trace) stops where it comes round again.
    `depth` counts from the root; `offset_ms` from `origin`.
    """
    children: dict[str | None, list[TreeRow]] = {}
    for row in rows:
        children.setdefault(row.parent_span_id, []).append(row)
    for siblings in children.values():
        siblings.sort(key=_order)
    lines: list[SpanLine] = []
    seen: set[str] = set()
    for root in roots:
        stack: list[tuple[TreeRow, int]] = [(root, 0)]
        while stack:
            row, depth = stack.pop()
            if row.span_id in seen:
                continue
            seen.add(row.span_id)
            lines.append(_line(row, depth, origin))
            stack.extend((child, depth + 1) for child in reversed(children.get(row.span_id, [])))
    return lines


def _line(row: TreeRow, depth: int, origin: datetime) -> SpanLine:
    return SpanLine(
        span_id=row.span_id,
        parent_span_id=row.parent_span_id,
        depth=depth,
        name=row.name,
        role=row.role,
        label=row.step_name if row.role == "step" and row.step_name else row.name,
        kind=row.kind,
        service_name=row.service_name,
        status=row.status,
        start_time=row.start_time,
        end_time=row.end_time,
        offset_ms=(row.start_time - origin).total_seconds() * 1000,
        duration_ms=row.duration_ms,
        error_message=row.error_message,
        sequence_num=row.sequence_num,
        step_type=row.step_type,
    )


# -- a whole trace ------------------------------------------------------------------------------------

# The ended spans of the trace and its live rows (no anti-join: the writer deletes a live row in the
# transaction that stores its span). The trace's time is not known, so `spans` is scanned by trace id.
_TRACE: Final = """
SELECT span_id, parent_span_id, name, workflow_role, step_name, kind, service_name, workflow_status,
       error_message, status_code, status_message, start_time, end_time, duration_ms, step_sequence,
       step_type, false, NULL
FROM spans WHERE trace_id = $trace
UNION ALL
SELECT span_id, parent_span_id, name, workflow_role, step_name, NULL, service_name, NULL, NULL, NULL, NULL,
       start_time, NULL, NULL, step_sequence, step_type, true, interrupted_at
FROM running_spans WHERE trace_id = $trace
"""


def get_trace(connection: duckdb.DuckDBPyConnection, trace_id: str) -> list[SpanLine]:
    """Every span of a trace, ended or running, as waterfall lines in depth-first order.

    The roots are the spans whose parent is not in the trace (there may be several), in start order;
    `offset_ms` counts from the earliest start. Raises `TraceNotFound` when no span has the id and
    ValueError when it is not 32 hexadecimal digits.
    """
    wanted = trace_id_of(trace_id)
    rows = [_tree_row(row) for row in connection.execute(_TRACE, {"trace": wanted}).fetchall()]
    if not rows:
        raise TraceNotFound(f"no span has trace id {wanted!r}")
    ordered = sorted(rows, key=_order)
    ids = {row.span_id for row in rows}
    roots = [row for row in ordered if row.parent_span_id not in ids]
    # Then every span in start order: those not reached from a root (in a parent cycle every span has a
    # parent in the trace) are shown from the earliest of them; the others are passed over.
    return span_lines(rows, [*roots, *ordered], ordered[0].start_time)


def _tree_row(row: tuple[Any, ...]) -> TreeRow:
    """A row of `_TRACE` as a `TreeRow`, its status that of an ended span or of a live row."""
    (span_id, parent, name, role, step_name, kind, service, workflow_status, error, code, message) = row[:11]
    (start, end, duration, sequence, step_type, live, interrupted_at) = row[11:]
    status, error = (
        live_status(interrupted_at) if live else ended_status(role, workflow_status, error, code, message)
    )
    return TreeRow(
        span_id, parent, name, role, step_name, kind, service, status, start, end, duration, error, sequence,
        step_type,
    )  # fmt: skip


# -- one span -----------------------------------------------------------------------------------------

# The ended span, or else its live row: what is known when a span starts, nothing of its end.
_SPAN: Final = """
SELECT trace_id, span_id, parent_span_id, name, kind, service_name, start_time, end_time, duration_ms,
       status_code, status_message, scope_name, scope_version, attributes::VARCHAR,
       resource_attributes::VARCHAR, coalesce(dropped_attributes, 0), coalesce(dropped_events, 0),
       coalesce(dropped_links, 0), false, NULL, workflow_role, execution_id, workflow_id, step_name,
       step_type, step_sequence
FROM spans WHERE trace_id = $trace AND span_id = $span
UNION ALL
SELECT trace_id, span_id, parent_span_id, name, NULL, service_name, start_time, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, NULL, 0, 0, 0, true, interrupted_at, workflow_role, execution_id, workflow_id, step_name,
       step_type, step_sequence
FROM running_spans WHERE trace_id = $trace AND span_id = $span
"""

_EVENTS: Final = """
SELECT name, timestamp, attributes::VARCHAR FROM span_events
WHERE trace_id = $trace AND span_id = $span ORDER BY event_index
"""

_LINKS: Final = """
SELECT linked_trace_id, linked_span_id, attributes::VARCHAR FROM span_links
WHERE trace_id = $trace AND span_id = $span ORDER BY link_index
"""

_RUNNING = 18  # the column of `_SPAN` that says the row is a live one


def get_span(connection: duckdb.DuckDBPyConnection, trace_id: str, span_id: str) -> SpanDetail:
    """One span with its attributes, resource, events and links; a running one from its live row.

    Raises `SpanNotFound` when the trace has no such span, ValueError for an id that is not hexadecimal
    digits (32 for the trace, 16 for the span).
    """
    ids = {"trace": trace_id_of(trace_id), "span": span_id_of(span_id)}
    rows = connection.execute(_SPAN, ids).fetchall()
    if not rows:
        raise SpanNotFound(f"trace {ids['trace']!r} has no span with id {ids['span']!r}")
    # The ended span before a live row; of a span stored twice, the first to start.
    row = min(rows, key=lambda row: (row[_RUNNING], row[6]))
    events: list[SpanEvent] = []
    links: list[SpanLink] = []
    if not row[_RUNNING]:
        events = [
            SpanEvent(name, timestamp, json_object(attributes))
            for name, timestamp, attributes in connection.execute(_EVENTS, ids).fetchall()
        ]
        links = [
            SpanLink(linked_trace, linked_span, json_object(attributes))
            for linked_trace, linked_span, attributes in connection.execute(_LINKS, ids).fetchall()
        ]
    (trace, span, parent, name, kind, service, start, end, duration, code, message, scope, version) = row[:13]
    (attributes, resource, dropped_attributes, dropped_events, dropped_links) = row[13:18]
    (running, interrupted_at) = row[18:20]
    (role, execution_id, workflow_id, step_name, step_type, step_sequence) = row[20:]
    return SpanDetail(
        trace_id=trace,
        span_id=span,
        parent_span_id=parent,
        name=name,
        kind=kind,
        service_name=service,
        start_time=start,
        end_time=end,
        duration_ms=duration,
        status_code=code,
        status_message=message,
        scope_name=scope,
        scope_version=version,
        attributes=json_object(attributes),
        resource_attributes=json_object(resource),
        events=events,
        links=links,
        dropped_attributes=dropped_attributes,
        dropped_events=dropped_events,
        dropped_links=dropped_links,
        running=running,
        interrupted_at=interrupted_at,
        workflow_role=role,
        execution_id=execution_id,
        workflow_id=workflow_id,
        step_name=step_name,
        step_type=step_type,
        step_sequence=step_sequence,
    )
