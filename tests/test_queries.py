"""The Python read API of TraceStore: executions, execution, logs, statistics, read-only SQL, prune."""

from __future__ import annotations

import dataclasses
import importlib
import shutil
import statistics
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from analytics_support import OLD_AGE_S, Filled, build_database
from conftest import Traced

from otel_workflow import TraceStore
from otel_workflow.model.errors import AmbiguousExecutionId, ExecutionNotFound, ReadOnlyViolation, StoreError
from otel_workflow.model.records import ExecutionDetail, LogRow, StepStats
from otel_workflow.query.readonly import check_read_only
from otel_workflow.query.timeparse import parse_duration, parse_time


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Filled:
    return build_database(tmp_path_factory.mktemp("queries") / "traces.duckdb")


@pytest.fixture
def reader(filled: Filled) -> TraceStore:
    return TraceStore(filled.path, read_only=True)


# -- times -----------------------------------------------------------------------------------------------


def test_parse_duration() -> None:
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("15m") == timedelta(minutes=15)
    assert parse_duration("1h30m") == timedelta(hours=1, minutes=30)
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("2w") == timedelta(weeks=2)
    assert parse_duration("250ms") == timedelta(milliseconds=250)
    assert parse_duration("1.5h") == timedelta(minutes=90)
    for bad in ("", "7", "d", "7 days", "-1h", "1y"):
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(bad)


def test_parse_time() -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_time("1h", now=now) == datetime(2024, 5, 1, 11, 0, tzinfo=UTC)
    assert parse_time(timedelta(days=1), now=now) == datetime(2024, 4, 30, 12, 0, tzinfo=UTC)
    assert parse_time("2024-05-01T10:00:00Z") == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert parse_time("2024-05-01 10:00:00+00:00") == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    naive = parse_time("2024-05-01T10:00")
    assert naive is not None and naive.tzinfo is not None
    assert naive == datetime(2024, 5, 1, 10, 0).astimezone()
    assert parse_time(None) is None
    with pytest.raises(ValueError, match="neither a duration"):
        parse_time("last tuesday")


# -- executions ------------------------------------------------------------------------------------------


def test_executions_filters_and_paging(reader: TraceStore, filled: Filled) -> None:
    everything = reader.executions(limit=None)
    assert {row.id for row in everything} == set(filled.all_ids)
    assert [row.started_at for row in everything] == sorted(
        (row.started_at for row in everything), reverse=True
    )
    assert [row.id for row in reader.executions(status="failed")] == [filled.failed_id]
    assert [row.id for row in reader.executions(workflow_id=["billing"])] == [filled.billing_id]
    assert [row.id for row in reader.executions(triggered_by="eve")] == [filled.captured_id]
    assert [row.id for row in reader.executions(error_contains="sku-0003")] == [filled.failed_id]
    assert [row.id for row in reader.executions(until=timedelta(days=7))] == [filled.old_id]
    recent = reader.executions(since=datetime.now(UTC) - timedelta(days=1), limit=None)
    assert filled.old_id not in {row.id for row in recent}
    assert len(recent) == len(everything) - 1
    assert reader.executions(limit=2, offset=1) == everything[1:3]
    with pytest.raises(ValueError, match="window is empty"):
        reader.executions(since="1h", until="2h")


def test_execution_by_prefix_with_steps_and_waterfall(reader: TraceStore, filled: Filled) -> None:
    detail = reader.execution(filled.failed_id[:5])
    assert isinstance(detail, ExecutionDetail)
    assert detail.id == filled.failed_id
    assert (detail.status, detail.workflow_id, detail.config_version) == (
        "failed",
        "order-pipeline",
        "sha256:0123abcd",
    )
    assert detail.capture_io is False and detail.trigger_data is None
    assert detail.steps == reader.steps(filled.failed_id)
    assert [step.sequence_num for step in detail.steps] == sorted(
        step.sequence_num or 0 for step in detail.steps
    )
    [root, *rest] = detail.spans
    assert (root.role, root.depth, root.span_id, root.offset_ms) == ("execution", 0, detail.span_id, 0)
    # Every step, plus the demo's HTTP client span (a child span that is not a step).
    step_lines = {line.span_id for line in rest if line.role == "step"}
    assert step_lines == {step.id for step in detail.steps}
    assert [line.label for line in rest if line.role != "step"] == ["GET /customers/{id}"]
    depth = {line.span_id: line.depth for line in detail.spans}
    for line in rest:
        assert depth[line.span_id] == depth[line.parent_span_id or ""] + 1
    # Depth-first in start order: each line's parent comes before it.
    seen: set[str] = set()
    for line in detail.spans:
        assert line.parent_span_id is None or line.parent_span_id in seen
        seen.add(line.span_id)
    assert dataclasses.asdict(detail)["spans"][0]["label"] == "workflow.execute"


def test_execution_lookup_errors(reader: TraceStore, filled: Filled) -> None:
    with pytest.raises(ExecutionNotFound, match="no execution with id 'nope'"):
        reader.execution("nope")
    with pytest.raises(ExecutionNotFound):
        reader.execution("  ")
    with pytest.raises(AmbiguousExecutionId) as info:
        reader.execution("cafe")
    assert info.value.candidates == [filled.captured_id, filled.billing_id]
    assert isinstance(info.value, LookupError)
    assert reader.resolve_execution_id("cafe0002") == filled.billing_id


def test_captured_io_is_in_the_detail(reader: TraceStore, filled: Filled) -> None:
    detail = reader.execution(filled.captured_id)
    assert detail.capture_io is True
    assert detail.trigger_data is not None and "[REDACTED]" in detail.trigger_data
    [step] = detail.steps
    assert step.input_data == '{"order":42,"password":"[REDACTED]"}'
    http = [line for line in detail.spans if line.role is None]
    assert [(line.label, line.kind, line.depth, line.status) for line in http] == [
        ("GET /customers/42", "CLIENT", 2, "completed")
    ]


def test_running_execution_shows_live_steps(traced: Traced) -> None:
    wf = traced.wf
    with wf.execution(trigger_type="POST /slow") as run, wf.step("prepare"):
        pass
    with wf.execution(trigger_type="POST /slow") as run, wf.step("prepare"), wf.step("await-approval"):
        traced.sync()
        detail = traced.store.execution(run.execution_id)
        assert detail.status == "running"
        assert detail.duration_ms is None and detail.elapsed_ms >= 0
        assert [(line.label, line.status, line.depth) for line in detail.spans] == [
            ("workflow.execute", "running", 0),
            ("prepare", "running", 1),
            ("await-approval", "running", 2),
        ]
        assert all(line.end_time is None and line.duration_ms is None for line in detail.spans)
    traced.sync()
    assert traced.store.execution(run.execution_id).status == "completed"


# -- logs and statistics ---------------------------------------------------------------------------------


def test_logs(reader: TraceStore, filled: Filled) -> None:
    rows = reader.logs(filled.failed_id[:8])
    assert all(isinstance(row, LogRow) for row in rows)
    assert [row.created_at for row in rows] == sorted(row.created_at for row in rows)
    assert rows[0].message == "Execution started: order-pipeline"
    warning = next(row for row in rows if row.level == "warning")
    assert warning.fields == {"level": "warning", "message": "inventory cache miss"}
    assert warning.module_name == "fetch-inventory"
    errors = reader.logs(filled.failed_id, level="ERROR")
    assert errors and all(row.level == "error" for row in errors)
    all_errors = reader.logs(level="error")
    assert {row.execution_id for row in all_errors} == {filled.failed_id, *filled.demo_ids[1::2]}
    assert reader.logs(since="1d", until=None, level="warning")
    assert reader.logs(until="7d") == reader.logs(filled.old_id)


def test_step_and_workflow_stats(reader: TraceStore, filled: Filled) -> None:
    stats = reader.step_stats(workflow_id="order-pipeline", since="1d")
    assert all(isinstance(row, StepStats) for row in stats)
    by_step = {row.step_name: row for row in stats}
    durations = [
        row[0]
        for row in reader.sql(
            "SELECT duration_ms FROM execution_steps "
            "WHERE step_name = 'validate' AND started_at >= now() - INTERVAL 1 DAY"
        )
    ]
    validate = by_step["validate"]
    assert validate.count == len(durations) == len(filled.demo_ids) + 1
    assert validate.max_ms == pytest.approx(max(durations))
    assert validate.p50_ms == pytest.approx(statistics.median(durations))
    charge = by_step["charge-payment"]
    # Every even-numbered demo order retries the payment once: those first attempts failed.
    assert charge.failed == len(filled.demo_ids) // 2
    assert charge.failure_rate == pytest.approx(charge.failed / charge.count)
    p95s = [row.p95_ms or 0 for row in stats]
    assert p95s == sorted(p95s, reverse=True)

    [workflow] = reader.workflow_stats(workflow_id="order-pipeline")
    assert (workflow.count, workflow.failed, workflow.running) == (len(filled.demo_ids) + 2, 1, 0)
    with pytest.raises(ValueError, match="unknown sort"):
        reader.step_stats(sort="colour")


# -- SQL -------------------------------------------------------------------------------------------------


def test_read_sql_and_arrow(reader: TraceStore, filled: Filled) -> None:
    table = reader.read_sql("SELECT id FROM workflow_executions WHERE id = ?", [filled.billing_id])
    assert isinstance(table, pa.Table)
    assert table.to_pylist() == [{"id": filled.billing_id}]
    assert reader.read_sql("WITH x AS (SELECT 1 AS a) SELECT a FROM x").num_rows == 1
    assert reader.read_sql("DESCRIBE spans").num_rows > 10
    assert reader.read_sql("EXPLAIN SELECT * FROM spans").num_rows >= 1
    pivot = reader.read_sql(
        "PIVOT workflow_executions ON status IN ('failed') USING count(*) GROUP BY workflow_id"
    )
    assert pivot.num_rows == 2
    with pytest.raises(ReadOnlyViolation, match="PIVOT without an IN list"):
        reader.read_sql("PIVOT workflow_executions ON status USING count(*)")
    assert reader.sql("SELECT count(*) FROM workflow_executions") == [(len(filled.all_ids),)]


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO spans SELECT * FROM spans",
        "DELETE FROM spans",
        "DROP VIEW workflow_executions",
        "COPY spans TO 'x.csv'",
        "ATTACH 'other.duckdb'",
        "DETACH other",
        "CREATE OR REPLACE MACRO m() AS 1",
        "ALTER TABLE spans ADD COLUMN x INT",
        "LOAD httpfs",
        "PRAGMA enable_profiling",
        "CALL dbgen(sf := 0.01)",
        "EXPORT DATABASE 'dump'",
        "BEGIN TRANSACTION",
        "CHECKPOINT",
        "SELECT 1; SELECT 2",
        "",
    ],
)
def test_check_read_only_refuses(statement: str) -> None:
    with pytest.raises(ReadOnlyViolation):
        check_read_only(statement)


def test_read_sql_refuses_even_on_a_writable_store(filled: Filled, tmp_path: Path) -> None:
    copy = tmp_path / "copy.duckdb"
    shutil.copy(filled.path, copy)
    with TraceStore(copy) as store:
        with pytest.raises(ReadOnlyViolation, match="DELETE"):
            store.read_sql("DELETE FROM spans")
        assert store.sql("SELECT count(*) > 0 FROM spans") == [(True,)]
    with pytest.raises(duckdb.ParserException):
        check_read_only("SELEC 1")


def test_dataframes_where_installed(reader: TraceStore) -> None:
    pandas = pytest.importorskip("pandas")
    frame = reader.df("SELECT id, status FROM workflow_executions ORDER BY id")
    assert isinstance(frame, pandas.DataFrame)
    assert list(frame.columns) == ["id", "status"]
    polars = pytest.importorskip("polars")
    assert isinstance(reader.pl("SELECT 1 AS a"), polars.DataFrame)


def test_missing_optional_library_is_a_clear_error(
    reader: TraceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.import_module

    def no_polars(name: str, package: str | None = None) -> object:
        if name == "polars":
            raise ModuleNotFoundError("No module named 'polars'")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", no_polars)
    with pytest.raises(ImportError, match=r"TraceStore.pl\(\) needs polars.*pip install polars"):
        reader.pl("SELECT 1")


# -- prune -----------------------------------------------------------------------------------------------


def _snapshot(store: TraceStore) -> dict[str, set[tuple[object, ...]]]:
    queries = {
        "spans": "SELECT trace_id, span_id FROM spans",
        "span_events": "SELECT trace_id, span_id, event_index FROM span_events",
        "span_links": "SELECT trace_id, span_id, link_index FROM span_links",
        "running_spans": "SELECT trace_id, span_id FROM running_spans",
        "executions": "SELECT id FROM workflow_executions",
        "steps": "SELECT id FROM execution_steps",
        "logs": "SELECT id FROM execution_logs",
    }
    return {name: set(store.sql(query)) for name, query in queries.items()}


def test_prune_removes_exactly_the_old_traces(filled: Filled, tmp_path: Path) -> None:
    copy = tmp_path / "copy.duckdb"
    shutil.copy(filled.path, copy)
    old_start = datetime.now(UTC) - timedelta(seconds=OLD_AGE_S)
    with duckdb.connect(str(copy)) as connection:
        # Leftovers of a process killed long ago: an interrupted live row, and one never marked at all.
        for trace_id, interrupted in (("f" * 32, old_start + timedelta(minutes=1)), ("e" * 32, None)):
            connection.execute(
                "INSERT INTO running_spans (trace_id, span_id, name, start_time, workflow_role, "
                "execution_id, workflow_id, writer_id, interrupted_at) "
                "VALUES (?, ?, 'workflow.execute', ?, 'execution', ?, 'order-pipeline', 'gone', ?)",
                [trace_id, trace_id[:16], old_start, f"lost-{trace_id[0]}", interrupted],
            )
    with TraceStore(copy) as store:
        before = _snapshot(store)
        old_traces = {filled.old_trace_id, "f" * 32, "e" * 32}
        keep_traces = {trace for trace, _ in before["spans"]} - old_traces
        kept_executions = {
            (row[0],)
            for row in store.sql(
                "SELECT id FROM workflow_executions WHERE trace_id IN (SELECT unnest(?))",
                [sorted(keep_traces)],
            )
        }

        dry = store.prune("7d", dry_run=True)
        assert _snapshot(store) == before
        report = store.prune(timedelta(days=7))
        assert dataclasses.replace(dry, dry_run=False, cutoff=report.cutoff) == report
        after = _snapshot(store)

    assert report.traces == 3
    assert report.running_spans == 2
    assert report.executions == 3 and report.steps == 1
    for table in ("spans", "span_events", "span_links", "running_spans"):
        assert after[table] == {row for row in before[table] if row[0] not in old_traces}, table
        assert getattr(report, table) == len(before[table]) - len(after[table])
    assert after["executions"] == kept_executions
    assert (report.steps, report.logs) == (
        len(before["steps"] - after["steps"]),
        len(before["logs"] - after["logs"]),
    )
    assert after["steps"] <= before["steps"] and after["logs"] <= before["logs"]
    assert {(i,) for i in filled.all_ids} - after["executions"] == {(filled.old_id,)}


def test_prune_needs_a_writable_store(reader: TraceStore) -> None:
    with pytest.raises(StoreError, match="read_only"):
        reader.prune("7d")
    with TraceStore(":memory:") as memory:
        with pytest.raises(ValueError, match="positive"):
            memory.prune(timedelta(0))
        with pytest.raises(ValueError, match="not a duration"):
            memory.prune("a week")
        assert memory.prune("1s").spans == 0


def test_an_empty_database_gives_empty_answers(tmp_path: Path) -> None:
    path = tmp_path / "fresh.duckdb"
    TraceStore(path).close()
    reader = TraceStore(path, read_only=True)
    assert reader.executions() == []
    assert reader.step_stats() == []
    assert reader.workflow_stats() == []
    assert reader.logs() == []
    with pytest.raises(ExecutionNotFound):
        reader.execution("a")
