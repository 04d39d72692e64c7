"""`TraceStore.execution` (query.executions.get_execution) on the rows that take its less common paths.

A run still going is only in the live half of `workflow_executions`; a step can be in another trace than its
execution (steps are found by execution id, waterfall spans by trace); an id can be reused, and then the run
that started first is shown, live or ended. The detail must equal what the views say.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from conftest import Traced
from opentelemetry import context as otel_context

from otel_workflow import TraceStore
from otel_workflow.model.records import ExecutionDetail
from otel_workflow.storage.schema import ensure_schema, rebuild_derived

INTERRUPTED = "interrupted: the process shut down before this span ended"


def _detached_step(traced: Traced, name: str) -> Any:
    """A step of the current execution started under a new root span, so in a trace of its own."""
    root = traced.provider.get_tracer("tests.detached").start_as_current_span(
        "detached job", context=otel_context.Context()
    )
    return root, traced.wf.step(name)


def _lines(detail: ExecutionDetail) -> list[tuple[str, str, int]]:
    return [(line.label, line.status, line.depth) for line in detail.spans]


def test_steps_in_another_trace_are_steps_but_not_in_the_waterfall(traced: Traced) -> None:
    wf = traced.wf
    with wf.execution(trigger_type="cron") as run, wf.step("local"):
        root, step = _detached_step(traced, "elsewhere")
        with root, step:
            pass
    traced.sync()
    detail = traced.store.execution(run.execution_id)
    assert [step.step_name for step in detail.steps] == ["local", "elsewhere"]
    assert detail.steps == traced.store.steps(run.execution_id)
    assert _lines(detail) == [("workflow.execute", "completed", 0), ("local", "completed", 1)]


def test_a_running_execution_by_id_and_by_prefix(traced: Traced) -> None:
    wf = traced.wf
    with wf.execution(trigger_type="POST /slow") as run, wf.step("prepare"):
        root, step = _detached_step(traced, "in-another-trace")
        with root, step:
            traced.sync()
            detail = traced.store.execution(run.execution_id)
            assert traced.store.execution(run.execution_id[:8]) == detail
            assert (detail.status, detail.current_step, detail.completed_at) == (
                "running",
                "in-another-trace",
                None,
            )
            assert [(s.step_name, s.status, s.completed_at) for s in detail.steps] == [
                ("prepare", "running", None),
                ("in-another-trace", "running", None),
            ]
            assert detail.steps == traced.store.steps(run.execution_id)
            assert _lines(detail) == [("workflow.execute", "running", 0), ("prepare", "running", 1)]


# -- rows written directly, for what the tracer does not produce on purpose -----------------------------

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class _Rows:
    """Writes spans and live rows; `trace` and `span` are two hex digits, repeated to a trace or span id."""

    def __init__(self, connection: duckdb.DuckDBPyConnection) -> None:
        self.connection = connection

    def span(
        self,
        trace: str,
        span: str,
        parent: str | None,
        start: float,
        *,
        execution: str | None = None,
        **kw: Any,
    ) -> None:
        role = kw.get("role")
        self.connection.execute(
            "INSERT INTO spans (trace_id, span_id, parent_span_id, name, kind, start_time, end_time, "
            "duration_ms, status_code, service_name, workflow_role, execution_id, workflow_id, step_name, "
            "step_sequence, workflow_status) "
            "VALUES (?, ?, ?, ?, 'INTERNAL', ?, ?, 1000, 'OK', 'svc', ?, ?, 'wf', ?, ?, ?)",
            [
                trace * 16,
                span * 8,
                parent and parent * 8,
                kw.get("name", "workflow.execute"),
                _at(start),
                _at(start + 1),
                role,
                execution,
                kw.get("step"),
                kw.get("sequence"),
                "completed" if role else None,
            ],
        )

    def live(
        self, trace: str, span: str, parent: str | None, start: float, *, execution: str, **kw: Any
    ) -> None:
        step = kw.get("step")
        self.connection.execute(
            "INSERT INTO running_spans (trace_id, span_id, parent_span_id, name, start_time, service_name, "
            "workflow_role, execution_id, workflow_id, step_name, step_sequence, writer_id, interrupted_at) "
            "VALUES (?, ?, ?, ?, ?, 'svc', ?, ?, 'wf', ?, 1, 'w', ?)",
            [
                trace * 16,
                span * 8,
                parent and parent * 8,
                f"workflow.step.{step}" if step else "workflow.execute",
                _at(start),
                "step" if step else "execution",
                execution,
                step,
                _at(start + 5) if kw.get("interrupted") else None,
            ],
        )


@pytest.fixture(scope="module")
def odd_rows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("odd") / "odd.duckdb"
    with duckdb.connect(str(path)) as connection:
        ensure_schema(connection)
        rows = _Rows(connection)
        # "reused": a run still going (trace a1) that started before an ended run of the same id (trace a2).
        rows.live("a1", "a1", None, 0, execution="reused")
        rows.live("a1", "a3", "a1", 1, execution="reused", step="wait")
        rows.span("a2", "a2", None, 30, execution="reused", role="execution")
        # "twice": two ended runs of one id; the first (trace b1) is shown, with the steps of both.
        rows.span("b2", "b2", None, 130, execution="twice", role="execution")
        rows.span("b2", "b4", "b2", 130, execution="twice", role="step", name="s", step="s", sequence=1)
        rows.span("b1", "b1", None, 100, execution="twice", role="execution")
        rows.span("b1", "b3", "b1", 100, execution="twice", role="step", name="s", step="s", sequence=1)
        # "gone": interrupted when its process shut down, with an interrupted step.
        rows.live("c1", "c1", None, 200, execution="gone", interrupted=True)
        rows.live("c1", "c2", "c1", 201, execution="gone", step="z", interrupted=True)
        # "skew": ended, with spans of its trace 2 minutes early (shown) and an hour late (not looked at).
        rows.span("d1", "d1", None, 300, execution="skew", role="execution")
        rows.span("d1", "d2", "d1", 180, name="GET /early")
        rows.span("d1", "d3", "d1", 3900, name="GET /late")
        rebuild_derived(connection)
    return path


@pytest.fixture
def odd(odd_rows: Path) -> TraceStore:
    return TraceStore(odd_rows, read_only=True)


def _first_row(store: TraceStore, execution_id: str) -> tuple[Any, ...]:
    [row] = store.sql(
        "SELECT status, trace_id, started_at FROM workflow_executions WHERE id = ? "
        "ORDER BY started_at LIMIT 1",
        [execution_id],
    )
    return row


@pytest.mark.parametrize("execution_id", ["reused", "twice", "gone", "skew"])
def test_the_detail_is_the_first_row_of_the_view_with_its_steps(odd: TraceStore, execution_id: str) -> None:
    detail = odd.execution(execution_id)
    assert (detail.status, detail.trace_id, detail.started_at) == _first_row(odd, execution_id)
    assert detail.steps == odd.steps(execution_id)


def test_a_reused_id_shows_the_run_that_started_first(odd: TraceStore) -> None:
    live = odd.execution("reused")
    assert (live.status, live.trace_id, live.current_step) == ("running", "a1" * 16, "wait")
    assert _lines(live) == [("workflow.execute", "running", 0), ("wait", "running", 1)]
    ended = odd.execution("twice")
    assert (ended.status, ended.trace_id) == ("completed", "b1" * 16)
    assert _lines(ended) == [("workflow.execute", "completed", 0), ("s", "completed", 1)]
    assert [step.id for step in ended.steps] == ["b3" * 8, "b4" * 8]


def test_an_interrupted_execution_and_step(odd: TraceStore) -> None:
    detail = odd.execution("gone")
    assert (detail.status, detail.error_message) == ("failed", INTERRUPTED)
    assert _lines(detail) == [("workflow.execute", "failed", 0), ("z", "failed", 1)]
    assert [line.error_message for line in detail.spans] == [INTERRUPTED, INTERRUPTED]
    assert [(step.status, step.error_message) for step in detail.steps] == [("failed", INTERRUPTED)]


def test_spans_of_the_trace_are_looked_up_within_the_skew_window(odd: TraceStore) -> None:
    detail = odd.execution("skew")
    assert _lines(detail) == [("workflow.execute", "completed", 0), ("GET /early", "completed", 1)]
    assert detail.spans[1].offset_ms == -120_000
