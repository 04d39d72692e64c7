"""The read side the web UI adds: any trace as a waterfall, one span in full, the change cursor, step
statistics over time, the tables and their columns, logs of one step.

Spans come from the real SDK into a real DuckDB file; a malformed trace (a parent cycle, two roots) is
written as rows, since no tracer makes one on purpose.
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from conftest import SERVICE_NAME, Traced
from opentelemetry import trace as otel_trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from otel_workflow import TraceStore
from otel_workflow.model.errors import SpanNotFound, TraceNotFound
from otel_workflow.query.logs import list_logs
from otel_workflow.query.stats import MAX_SERIES_BUCKETS, series_bucket_width
from otel_workflow.storage.schema import ensure_schema


def _trace_id(span: otel_trace.Span) -> str:
    return format(span.get_span_context().trace_id, "032x")


def _span_id(span: otel_trace.Span) -> str:
    return format(span.get_span_context().span_id, "016x")


# -- a trace ---------------------------------------------------------------------------------------------


def test_a_trace_holds_every_span_under_its_root_with_nesting_and_statuses(traced: Traced) -> None:
    tracer = traced.provider.get_tracer("tests.http")
    wf = traced.wf
    with (
        tracer.start_as_current_span("POST /orders", kind=SpanKind.SERVER) as server,
        wf.execution(trigger_type="POST /orders"),
        wf.step("validate"),
        tracer.start_as_current_span("SELECT stock") as query,
    ):
        query.set_status(Status(StatusCode.ERROR, "deadlock"))
    traced.sync()
    lines = traced.store.trace(_trace_id(server))
    assert [(line.label, line.depth, line.status, line.role) for line in lines] == [
        ("POST /orders", 0, "completed", None),
        ("workflow.execute", 1, "completed", "execution"),
        ("validate", 2, "completed", "step"),
        ("SELECT stock", 3, "failed", None),
    ]
    assert lines[3].error_message == "deadlock"
    assert lines[0].offset_ms == 0 and all(line.offset_ms >= 0 for line in lines)
    assert lines[0].service_name == SERVICE_NAME and lines[0].kind == "SERVER"
    # The execution's own waterfall is the part under the execution span: the same lines, one level up.
    [run] = traced.store.executions()
    detail = traced.store.execution(run.id)
    assert [(line.label, line.depth) for line in detail.spans] == [
        (line.label, line.depth - 1) for line in lines[1:]
    ]
    # Upper case and spaces are read as the id.
    assert traced.store.trace(f" {_trace_id(server).upper()} ") == lines


def test_a_running_trace_shows_its_live_rows(traced: Traced) -> None:
    wf = traced.wf
    with wf.execution(trigger_type="cron"), wf.step("done-step"):
        pass
    with wf.execution(trigger_type="cron"), wf.step("slow") as slow:
        step = slow.span
        traced.sync()
        lines = traced.store.trace(_trace_id(step))
        assert [(line.label, line.status, line.end_time) for line in lines] == [
            ("workflow.execute", "running", None),
            ("slow", "running", None),
        ]
        live = traced.store.span(_trace_id(step), _span_id(step))
        assert live.running and live.end_time is None and live.step_name == "slow"
        assert (live.events, live.links, live.attributes) == ([], [], {})
    traced.sync()
    ended = traced.store.span(_trace_id(step), _span_id(step))
    assert not ended.running and ended.end_time is not None


def test_unknown_and_malformed_ids(traced: Traced) -> None:
    with pytest.raises(TraceNotFound):
        traced.store.trace("0" * 32)
    for bad in ("", "xyz", "0" * 31, "0" * 33, "g" * 32, "'; DROP TABLE spans; --"):
        with pytest.raises(ValueError, match="trace id"):
            traced.store.trace(bad)
    with pytest.raises(ValueError, match="span id"):
        traced.store.span("0" * 32, "0" * 15)
    with pytest.raises(SpanNotFound):
        traced.store.span("0" * 32, "0" * 16)


@pytest.fixture
def malformed(tmp_path: Path) -> TraceStore:
    """Trace `aa..`: span 01 is a root with child 02; 03 and 04 are each other's parent; 05 has a parent
    that was never stored (a second root). Starts: 01 at 0 s, 02 at 1 s, 03 at 2 s, 04 at 3 s, 05 at 4 s."""
    path = tmp_path / "malformed.duckdb"
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with duckdb.connect(str(path)) as connection:
        ensure_schema(connection)
        for span, parent, at in (
            ("01", None, 0),
            ("02", "01", 1),
            ("03", "04", 2),
            ("04", "03", 3),
            ("05", "ff", 4),
        ):
            connection.execute(
                "INSERT INTO spans (trace_id, span_id, parent_span_id, name, start_time, end_time, "
                "duration_ms, status_code) VALUES (?, ?, ?, ?, ?, ?, 500, 'UNSET')",
                ["aa" * 16, span * 8, parent and parent * 8, f"span {span}", start + timedelta(seconds=at),
                 start + timedelta(seconds=at + 0.5)],
            )  # fmt: skip
    return TraceStore(path, read_only=True)


def test_a_trace_with_a_parent_cycle_and_a_lost_parent_shows_every_span_once(malformed: TraceStore) -> None:
    lines = malformed.trace("aa" * 16)
    assert [(line.name, line.depth) for line in lines] == [
        ("span 01", 0),
        ("span 02", 1),
        ("span 05", 0),  # its parent is not in the trace: a root
        ("span 03", 0),  # the cycle, shown from its earliest span
        ("span 04", 1),
    ]
    assert [line.offset_ms for line in lines] == [0, 1000, 4000, 2000, 3000]


# -- one span --------------------------------------------------------------------------------------------


def test_a_span_in_full_attributes_events_links_resource(traced: Traced) -> None:
    tracer = traced.provider.get_tracer("tests.detail", "1.2")
    with tracer.start_as_current_span("upstream") as upstream:
        pass
    link = Link(upstream.get_span_context(), {"link.why": "retry of"})
    with tracer.start_as_current_span(
        "charge", links=[link], attributes={"card.last4": "4242", "n": 3}
    ) as span:
        span.add_event("checkpoint", {"at": "authorise"})
        try:
            raise RuntimeError("<script>alert(1)</script>")
        except RuntimeError as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, "card declined"))
    traced.sync()
    detail = traced.store.span(_trace_id(span), _span_id(span))
    assert (detail.name, detail.status_code, detail.status_message) == ("charge", "ERROR", "card declined")
    assert (detail.scope_name, detail.scope_version) == ("tests.detail", "1.2")
    assert detail.attributes == {"card.last4": "4242", "n": 3}
    assert detail.resource_attributes["service.name"] == SERVICE_NAME
    assert [event.name for event in detail.events] == ["checkpoint", "exception"]
    assert detail.events[0].attributes == {"at": "authorise"}
    exception = detail.events[1].attributes
    assert exception["exception.type"] == "RuntimeError"
    assert exception["exception.message"] == "<script>alert(1)</script>"
    assert "Traceback" in exception["exception.stacktrace"]
    assert [(link.trace_id, link.span_id, link.attributes) for link in detail.links] == [
        (_trace_id(upstream), _span_id(upstream), {"link.why": "retry of"})
    ]
    assert not detail.running and detail.duration_ms is not None and detail.duration_ms >= 0
    assert (detail.dropped_attributes, detail.dropped_events, detail.dropped_links) == (0, 0, 0)


# -- the change cursor -----------------------------------------------------------------------------------


def test_the_change_cursor_moves_on_every_kind_of_write_and_only_then(traced: Traced) -> None:
    store = traced.store
    empty = store.change_cursor()
    assert store.change_cursor() == empty
    with traced.wf.execution(trigger_type="cron"), traced.wf.step("slow"):
        traced.sync()
        started = store.change_cursor()  # live rows only
        assert started != empty
        assert store.change_cursor() == started
    traced.sync()
    ended = store.change_cursor()  # the live rows became spans
    assert ended not in (empty, started)
    with traced.provider.get_tracer("tests").start_as_current_span("plain"):
        pass
    traced.sync()
    assert store.change_cursor() != ended


# -- statistics over time --------------------------------------------------------------------------------


def test_bucket_widths_are_round_and_bounded() -> None:
    assert series_bucket_width(timedelta(hours=1), 12) == 300
    assert series_bucket_width(timedelta(hours=1), 60) == 60
    assert series_bucket_width(timedelta(hours=24), 60) == 1800  # 24 min is not round: 30 min
    assert series_bucket_width(timedelta(days=30), 60) == 43_200
    assert series_bucket_width(timedelta(days=365), 10) == 37 * 86_400
    assert series_bucket_width(timedelta(seconds=10), 500) == 1


def test_the_series_counts_each_ended_step_once_in_the_bucket_of_its_start(traced: Traced) -> None:
    wf = traced.wf
    for fails in (False, False, True):
        with (
            pytest.raises(ValueError) if fails else contextlib.nullcontext(),
            wf.execution(trigger_type="cron"),
        ):
            with wf.step("fetch"):
                pass
            with wf.step("charge"):
                if fails:
                    raise ValueError("declined")
    with wf.execution(trigger_type="cron"), wf.step("charge"):
        traced.sync()  # a running step is not counted
        series = traced.store.step_series(since="1h", buckets=12)
    assert series.bucket_s == 300
    assert series.series[0].start <= series.since and series.series[-1].start < series.until
    assert all(b.start.timestamp() % 300 == 0 for b in series.series)
    assert len(series.series) in (12, 13)
    assert sum(b.count for b in series.series) == 6 and sum(b.failed for b in series.series) == 1
    [full] = [b for b in series.series if b.count]
    assert full.failure_rate == pytest.approx(1 / 6)
    assert full.p50_ms is not None and full.p50_ms <= (full.p95_ms or 0) <= (full.p99_ms or 0)
    assert all(b.failure_rate is None and b.p95_ms is None for b in series.series if not b.count)
    charge = traced.store.step_series(since="1h", step_name="charge")
    assert (sum(b.count for b in charge.series), sum(b.failed for b in charge.series)) == (3, 1)
    other = traced.store.step_series(since="1h", workflow_id="no-such-workflow")
    assert sum(b.count for b in other.series) == 0
    day = traced.store.step_series()
    assert day.until - day.since == timedelta(hours=24) and day.bucket_s == 1800


def test_series_arguments_are_checked(traced: Traced) -> None:
    for buckets in (0, MAX_SERIES_BUCKETS + 1):
        with pytest.raises(ValueError, match="buckets"):
            traced.store.step_series(buckets=buckets)
    with pytest.raises(ValueError, match="empty"):
        traced.store.step_series(since="1h", until="2h")


# -- tables, logs of one step ----------------------------------------------------------------------------


def test_the_tables_and_views_with_their_columns(traced: Traced) -> None:
    tables = {table.name: table for table in traced.store.tables()}
    assert {"spans", "span_events", "running_spans", "executions"} <= {
        name for name, table in tables.items() if table.kind == "table"
    }
    assert {"steps", "workflow_executions", "execution_steps", "execution_logs"} <= {
        name for name, table in tables.items() if table.kind == "view"
    }
    columns = [(column.name, column.type) for column in tables["spans"].columns]
    assert columns[:2] == [("trace_id", "VARCHAR"), ("span_id", "VARCHAR")]
    assert ("start_time", "TIMESTAMP WITH TIME ZONE") in columns
    # The same columns, in the same order, as DuckDB describes them.
    described = traced.store.sql("DESCRIBE workflow_executions")
    assert [(c.name, c.type) for c in tables["workflow_executions"].columns] == [
        (r[0], r[1]) for r in described
    ]


def test_logs_of_one_step(traced: Traced) -> None:
    wf = traced.wf
    with wf.execution(trigger_type="cron") as run:
        with wf.step("first"):
            otel_trace.get_current_span().add_event("halfway")
        with wf.step("second"):
            pass
    traced.sync()
    first = next(step for step in traced.store.steps(run.execution_id) if step.step_name == "first")
    rows = traced.store.logs(run.execution_id, step_id=first.id)
    assert [row.message for row in rows[:2]] == ["Step started: first", "halfway"]
    assert len(rows) == 3 and rows[2].message.startswith("Step completed: first")
    assert {row.step_id for row in rows} == {first.id}
    assert len(traced.store.logs(run.execution_id)) > len(rows)


def test_the_logs_of_an_execution_are_those_of_its_time_window(traced: Traced) -> None:
    wf = traced.wf
    with wf.execution(trigger_type="cron") as run, wf.step("late-event"):
        span = otel_trace.get_current_span()
        span.add_event("in time")
        # An event stamped an hour after the run (a wrong clock): outside the window the run is read in.
        span.add_event("an hour later", timestamp=time.time_ns() + 3600 * 1_000_000_000)
    traced.sync()
    messages = [row.message for row in traced.store.logs(run.execution_id)]
    assert "in time" in messages and "an hour later" not in messages
    assert "an hour later" in [row.message for row in traced.store.logs()]


def test_the_logs_of_an_execution_read_through_its_window_equal_the_views_rows(traced: Traced) -> None:
    wf = traced.wf
    for attempt in range(3):
        with contextlib.suppress(RuntimeError), wf.execution(trigger_type="cron"):
            with wf.step("fetch"):
                otel_trace.get_current_span().add_event("fetched", {"level": "warning", "rows": attempt})
            with wf.step("charge"):
                if attempt == 1:
                    raise RuntimeError("declined")
    with wf.execution(trigger_type="cron") as running, wf.step("slow"):
        otel_trace.get_current_span().add_event("waiting")
        traced.sync()
        ids = [row.id for row in traced.store.executions()]
        assert running.execution_id in ids and len(ids) == 4
        with traced.store.connection() as connection:
            for execution_id in ids:
                # Without a window, list_logs reads the execution_logs view as it is.
                assert traced.store.logs(execution_id) == list_logs(connection, execution_id), execution_id
