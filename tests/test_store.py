"""TraceStore and DuckDBSpanExporter: idempotent ingest, persistence, precision, schema, errors, logs."""

from __future__ import annotations

import gc
import json
import re
import subprocess
import sys
import threading
import weakref
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from conftest import WORKFLOW_ID, Traced
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, format_span_id
from support import epoch_us, refuse_spans_where, wait_until

from otel_workflow import (
    DuckDBSpanExporter,
    StoreError,
    TraceStore,
    WorkflowSpanProcessor,
    WorkflowTracer,
    capture_io,
)
from otel_workflow.storage.schema import SCHEMA_VERSION, VERSION_TABLE


def capture_spans() -> tuple[list[ReadableSpan], str]:
    """A small workflow run captured in memory: 2 steps, one custom event, one exception, one link."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "capture"}), shutdown_on_exit=False)
    provider.add_span_processor(WorkflowSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(memory))
    wf = WorkflowTracer(WORKFLOW_ID, tracer_provider=provider)
    with wf.execution(trigger_type="POST /orders") as run:
        with wf.step("validate") as step:
            step.span.add_event("cache.miss", {"message": "cache miss", "key": "k1"})
        with pytest.raises(ValueError), wf.step("charge"):
            raise ValueError("boom")
        with wf.otel_tracer.start_as_current_span(
            "POST https://payments.example.com", links=[Link(run.span.get_span_context(), {"why": "retry"})]
        ):
            pass
    spans = list(memory.get_finished_spans())
    provider.shutdown()
    return spans, run.execution_id


def counts(store: TraceStore) -> tuple[int, int, int, int, int]:
    [row] = store.sql(
        "SELECT (SELECT count(*) FROM spans), (SELECT count(*) FROM span_events), "
        "(SELECT count(*) FROM span_links), (SELECT count(*) FROM workflow_executions), "
        "(SELECT count(*) FROM execution_steps)"
    )
    return row  # type: ignore[return-value]


def expected_counts(spans: Sequence[ReadableSpan]) -> tuple[int, int, int, int, int]:
    return (len(spans), sum(len(s.events) for s in spans), sum(len(s.links) for s in spans), 1, 2)


# The duplicate-span path of the store calls DuckDB's Arrow conversion, which warns; that warning has a
# test of its own (test_memory_store_and_arrow_results). Here it is ignored to show what gets stored.
@pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")
@pytest.mark.parametrize("mode", ["flushed-between", "same-writer-batch", "one-call-twice", "reopened-store"])
def test_exporting_the_same_batch_twice_stores_each_span_and_event_once(db_path: Path, mode: str) -> None:
    spans, _ = capture_spans()
    assert expected_counts(spans)[1:3] == (2, 1)
    with TraceStore(db_path) as store:
        exporter = DuckDBSpanExporter(store)
        if mode == "one-call-twice":
            assert exporter.export(spans + spans) is SpanExportResult.SUCCESS
        else:
            assert exporter.export(spans) is SpanExportResult.SUCCESS
            if mode == "flushed-between":
                assert store.flush()
            if mode == "reopened-store":
                exporter.shutdown()
                store.close()
                store = TraceStore(db_path)  # noqa: PLW2901 - the with block closes the first one
                exporter = DuckDBSpanExporter(store)
            assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert store.flush()
        assert counts(store) == expected_counts(spans)
        assert store.sql("SELECT count(*) FROM (SELECT DISTINCT span_id, event_index FROM span_events)") == [
            (expected_counts(spans)[1],)
        ]
        exporter.shutdown()
        store.close()


def test_reopening_the_file_keeps_everything(traced: Traced) -> None:
    wf = traced.wf
    for _ in range(3):
        with wf.execution(trigger_type="cron"), wf.step("a"), wf.step("b"):
            pass
    traced.finish()
    before = counts(traced.store)
    executions = traced.store.executions()
    traced.store.close()
    assert before == (9, 0, 0, 3, 6)

    with TraceStore(traced.path) as reopened:
        assert counts(reopened) == before
        assert reopened.executions() == executions
    with TraceStore(traced.path, read_only=True) as reader:
        assert counts(reader) == before
        assert reader.executions() == executions
        assert {s.step_name for e in executions for s in reader.steps(e.id)} == {"a", "b"}


def test_timestamps_keep_microseconds(db_path: Path) -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    start_ns = 1_700_000_000_123_456_789
    end_ns = start_ns + 1_234_567_891
    span = tracer.start_span(
        "workflow.execute", attributes={"workflow.execution.id": "e-us"}, start_time=start_ns
    )
    span.add_event("tick", timestamp=start_ns + 7_654_321)
    span.end(end_time=end_ns)
    provider.shutdown()

    with TraceStore(db_path) as store:
        exporter = DuckDBSpanExporter(store)
        exporter.export(memory.get_finished_spans())
        assert exporter.force_flush()
        [(start, end, duration)] = store.sql("SELECT start_time, end_time, duration_ms FROM spans")
        assert epoch_us(start) == start_ns // 1000
        assert epoch_us(end) == end_ns // 1000
        assert start.microsecond == 123_456
        assert duration == pytest.approx(1234.567891, abs=1e-6)
        [(event_time,)] = store.sql("SELECT timestamp FROM span_events")
        assert epoch_us(event_time) == (start_ns + 7_654_321) // 1000
        [(started_at, completed_at, exec_duration)] = store.sql(
            "SELECT started_at, completed_at, duration_ms FROM workflow_executions WHERE id = 'e-us'"
        )
        assert epoch_us(started_at) == start_ns // 1000
        assert epoch_us(completed_at) == end_ns // 1000
        assert exec_duration == pytest.approx(1234.567891, abs=1e-6)
        exporter.shutdown()


def test_schema_version_table_exists_once(db_path: Path) -> None:
    for _ in range(3):
        TraceStore(db_path).close()
    with TraceStore(db_path) as store:
        assert store.sql(f"SELECT version FROM {VERSION_TABLE}") == [(SCHEMA_VERSION,)]
        tables = {name for (name,) in store.sql("SELECT table_name FROM duckdb_tables()")}
        assert {VERSION_TABLE, "spans", "span_events", "span_links", "running_spans"} <= tables
        views = {name for (name,) in store.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal")}
        assert {"workflow_executions", "execution_steps", "execution_logs"} <= views


def test_future_schema_version_is_refused_with_a_clear_error(db_path: Path) -> None:
    TraceStore(db_path).close()
    with duckdb.connect(str(db_path)) as connection:
        connection.execute(f"INSERT INTO {VERSION_TABLE} VALUES (999, now())")
    with pytest.raises(StoreError, match=r"schema version 999.*newer") as info:
        TraceStore(db_path)
    assert str(db_path) in str(info.value)
    with duckdb.connect(str(db_path), read_only=True) as connection:
        assert connection.execute(f"SELECT max(version) FROM {VERSION_TABLE}").fetchone() == (999,)


def test_missing_folder_or_file_gives_store_error(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "folder"
    with pytest.raises(StoreError, match="does not exist"):
        TraceStore(missing / "t.duckdb")
    assert not missing.exists()
    with pytest.raises(StoreError, match="no database"):
        TraceStore(tmp_path / "absent.duckdb", read_only=True)
    with pytest.raises(StoreError):
        TraceStore(":memory:", read_only=True)


def test_export_after_shutdown_returns_failure_and_counts_the_drop(db_path: Path) -> None:
    spans, _ = capture_spans()
    store = TraceStore(db_path)
    exporter = DuckDBSpanExporter(store)
    exporter.shutdown()
    exporter.shutdown()  # idempotent
    assert exporter.export(spans) is SpanExportResult.FAILURE
    # A second exporter on the closed store: the store refuses, the exporter reports FAILURE, nobody raises.
    second = DuckDBSpanExporter(store)
    assert second.export(spans) is SpanExportResult.FAILURE
    assert store.dropped_spans == len(spans)
    store.close()
    assert counts(TraceStore(db_path, read_only=True))[0] == 0


def test_exporter_from_a_path_owns_and_releases_its_store(db_path: Path) -> None:
    spans, _ = capture_spans()
    exporter = DuckDBSpanExporter(db_path)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert exporter.export(spans) is SpanExportResult.FAILURE
    # The file is released: another connection can open it for writing.
    with duckdb.connect(str(db_path)) as connection:
        assert connection.execute("SELECT count(*) FROM spans").fetchone() == (len(spans),)


def test_force_flush_returns_true_and_data_is_then_readable(db_path: Path) -> None:
    spans, execution_id = capture_spans()
    with TraceStore(db_path) as store:
        exporter = DuckDBSpanExporter(store)
        assert exporter.force_flush() is True  # nothing queued
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert exporter.force_flush() is True
        assert store.queued == 0
        assert counts(store) == expected_counts(spans)
        assert [e.id for e in store.executions()] == [execution_id]
        exporter.shutdown()


def test_exported_spans_are_not_kept_while_they_wait_to_be_written(db_path: Path) -> None:
    # Span objects kept alive until the writer's next cycle made every garbage collection of the
    # application walk them: the queue holds their rows, converted as they are exported.
    spans, _ = capture_spans()
    expected = expected_counts(spans)
    alive = [weakref.ref(span) for span in spans]
    with TraceStore(db_path, flush_interval_s=60.0) as store:
        exporter = DuckDBSpanExporter(store)
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        queued = len(spans)
        del spans

        def all_gone() -> bool:
            gc.collect()
            return all(ref() is None for ref in alive)

        # Converted by the store's converter thread as soon as it gets the GIL, then freed.
        wait_until(all_gone, timeout_s=10.0, what="the exported spans to be converted and freed")
        assert store.queued == queued  # the writer waits for more (up to a minute): not written yet
        assert exporter.force_flush() is True
        assert counts(store) == expected
        exporter.shutdown()


def test_a_span_the_database_refuses_is_left_out_alone(db_path: Path) -> None:
    # The database may refuse a row for what it holds (here a CHECK a user added to the table): the
    # batch is halved until that span is alone, and every other span keeps its events and links.
    spans, execution_id = capture_spans()
    refuse_spans_where(db_path, "name NOT LIKE '%charge'")
    refused = [span for span in spans if span.name.endswith("charge")]
    assert len(refused) == 1
    with TraceStore(db_path) as store:
        exporter = DuckDBSpanExporter(store)
        exporter.export(spans)
        assert exporter.force_flush() is True
        assert store.dropped_by_reason["rejected"] == 1
        stored = len(spans) - 1
        events = sum(len(span.events) for span in spans if span not in refused)
        links = sum(len(span.links) for span in spans)
        assert counts(store) == (stored, events, links, 1, 1)
        assert [step.step_name for step in store.steps(execution_id)] == ["validate"]
        exporter.shutdown()


def test_memory_store_and_arrow_results() -> None:
    spans, execution_id = capture_spans()
    with TraceStore(":memory:") as store:
        exporter = DuckDBSpanExporter(store)
        exporter.export(spans)
        assert exporter.force_flush()
        table = store.arrow("SELECT id, status FROM workflow_executions")
        assert isinstance(table, pa.Table)
        assert table.to_pylist() == [{"id": execution_id, "status": "completed"}]
        exporter.shutdown()


def test_execution_logs_follow_the_go_tracker(traced: Traced) -> None:
    wf = traced.wf
    with pytest.raises(ValueError), wf.execution(trigger_type="POST /orders") as run:
        with wf.step("validate") as validate:
            pass
        with wf.step("lookup") as lookup:
            lookup.span.add_event("cache.miss", {"message": "cache miss for k1", "key": "k1"})
        with wf.step("charge") as charge:
            raise ValueError("boom")
    traced.finish()

    def sid(handle: object) -> str:
        return format_span_id(handle.span.get_span_context().span_id)  # type: ignore[attr-defined]

    rows = traced.rows(
        "SELECT level, message, module_name, step_id, execution_id, workflow_id, fields, created_at "
        "FROM execution_logs ORDER BY created_at, id"
    )
    assert all(r[4] == run.execution_id and r[5] == WORKFLOW_ID and r[7] is not None for r in rows)
    summary = Counter((r[0], r[1], r[2], r[3]) for r in rows)
    [completed] = [r[1] for r in rows if r[1].startswith("Step completed: validate")]
    assert re.fullmatch(r"Step completed: validate \(\d+\.\dms\)", completed)
    [lookup_done] = [r[1] for r in rows if r[1].startswith("Step completed: lookup")]
    assert summary == Counter(
        [
            ("info", "Execution started: orders", None, None),
            ("info", "Step started: validate", "validate", sid(validate)),
            ("info", completed, "validate", sid(validate)),
            ("info", "Step started: lookup", "lookup", sid(lookup)),
            ("event", "cache miss for k1", "lookup", sid(lookup)),
            ("info", lookup_done, "lookup", sid(lookup)),
            ("info", "Step started: charge", "charge", sid(charge)),
            # The exception event of the step, its end row, then the same for the execution.
            ("error", "ValueError: boom", "charge", sid(charge)),
            ("error", "Step failed: charge: ValueError: boom", "charge", sid(charge)),
            ("error", "ValueError: boom", None, None),
            ("error", "Execution failed: orders: ValueError: boom", None, None),
        ]
    )
    [event_fields] = [r[6] for r in rows if r[0] == "event"]
    assert json.loads(event_fields)["key"] == "k1"


def test_io_is_not_stored_when_capture_is_off(traced: Traced) -> None:
    wf = traced.wf
    with wf.execution() as run, wf.step("charge") as step:
        step.record_input({"card": "4111 1111 1111 1111"})
        step.record_output({"charged": True})
    traced.finish()

    [(input_data, output_data)] = traced.rows(
        "SELECT input_data, output_data FROM execution_steps WHERE execution_id = ?", [run.execution_id]
    )
    assert input_data is None
    assert output_data is None
    assert traced.scalar("SELECT count(*) FROM span_events WHERE name LIKE 'workflow.step.%put'") == 0
    assert traced.scalar("SELECT count(*) FROM execution_logs WHERE message LIKE '%recorded'") == 0
    assert traced.scalar("SELECT count(*) FROM spans WHERE attributes::VARCHAR LIKE '%4111%'") == 0


def test_io_is_stored_when_capture_is_on_and_logs_omit_the_payload(traced: Traced) -> None:
    wf = traced.wf
    with capture_io(), wf.execution() as run, wf.step("charge") as step:
        step.record_input({"order": 42, "items": ["a", "b"]})
        step.record_output({"charged": True})
    traced.finish()

    [(input_data, output_data)] = traced.rows(
        "SELECT input_data, output_data FROM execution_steps WHERE execution_id = ?", [run.execution_id]
    )
    assert json.loads(input_data) == {"order": 42, "items": ["a", "b"]}
    assert json.loads(output_data) == {"charged": True}
    logs = [m for (m,) in traced.rows("SELECT message || ' ' || fields FROM execution_logs")]
    assert any(m.startswith("Step input recorded") for m in logs)
    assert any(m.startswith("Step output recorded") for m in logs)
    assert not any("items" in m for m in logs)


def test_derived_tables_rebuild_from_the_raw_spans_alone(traced: Traced) -> None:
    with traced.wf.execution(trigger_type="POST /orders"):
        with traced.wf.step("validate"), traced.wf.step("nested"):
            pass
        with pytest.raises(ValueError), traced.wf.step("charge"):
            raise ValueError("boom")
    traced.sync()
    query_executions = "SELECT * FROM executions ORDER BY id"
    query_steps = "SELECT * FROM steps ORDER BY id"
    executions, steps = traced.store.sql(query_executions), traced.store.sql(query_steps)
    assert len(executions) == 1 and len(steps) == 3
    assert {row[2]: row[6] for row in steps}["nested"] == {row[2]: row[0] for row in steps}["validate"]
    traced.store.sql("DELETE FROM executions")
    assert traced.store.sql("SELECT count(*) FROM workflow_executions") == [(0,)]
    traced.store.rebuild_derived()
    assert traced.store.sql(query_executions) == executions
    # The steps are a view of the step spans: nothing of theirs to lose or rebuild.
    assert traced.store.sql(query_steps) == steps


def test_a_version_2_file_has_its_steps_table_replaced_by_the_view(traced: Traced) -> None:
    with traced.wf.execution(trigger_type="cron"):
        with traced.wf.step("validate"):
            pass
        with pytest.raises(ValueError), traced.wf.step("charge"):
            raise ValueError("boom")
    traced.sync()
    steps = traced.store.sql("SELECT * FROM execution_steps ORDER BY id")
    traced.store.close()
    with duckdb.connect(str(traced.store.path)) as connection:  # back to version 2: a table of the steps
        connection.execute("CREATE TABLE old_steps AS SELECT * FROM steps")
        connection.execute("DROP VIEW steps")
        connection.execute("ALTER TABLE old_steps RENAME TO steps")
        connection.execute(f"DELETE FROM {VERSION_TABLE}")
        connection.execute(f"INSERT INTO {VERSION_TABLE} VALUES (2, now())")
    with TraceStore(traced.store.path) as store:
        assert store.sql(f"SELECT max(version) FROM {VERSION_TABLE}") == [(SCHEMA_VERSION,)]
        kinds = store.sql("SELECT 'view' FROM duckdb_views() WHERE view_name = 'steps'")
        assert kinds == [("view",)]
        assert store.sql("SELECT * FROM execution_steps ORDER BY id") == steps


def test_a_read_only_store_does_not_load_what_only_writing_needs(tmp_path: Path) -> None:
    # pyarrow's pandas support (about 50 MB, 0.2 s) is loaded at set-up by a store that writes; a CLI
    # command, which only reads, must not pay for it.
    db = tmp_path / "traces.duckdb"
    TraceStore(db).close()
    code = (
        "import sys\n"
        "from otel_workflow import TraceStore\n"
        "TraceStore(sys.argv[1], read_only=True).sql('SELECT count(*) FROM spans')\n"
        "print('pyarrow.pandas_compat' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_close_stops_the_writer_and_converter_threads(db_path: Path) -> None:
    spans, _ = capture_spans()
    before = set(threading.enumerate())
    store = TraceStore(db_path)
    exporter = DuckDBSpanExporter(store)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    started = {thread.name for thread in set(threading.enumerate()) - before}
    assert any(name.endswith("-convert") for name in started), started
    store.close()
    wait_until(lambda: set(threading.enumerate()) <= before, timeout_s=10.0, what="its threads to stop")
    with TraceStore(db_path, read_only=True) as reader:
        assert counts(reader) == expected_counts(spans)
