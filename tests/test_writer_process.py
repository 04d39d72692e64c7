"""`TraceStore(path, writer_process=True)`: a child process holds the DuckDB file and runs the writes.

Every test runs the real writer process (`python -m otel_workflow.storage.writerchild`) on a real
file; the application side is the real SDK with our processor and exporter. What users rely on must
not change with the option: the same rows as the in-process writer, live rows, reads from the
application while the child writes, counted rejections, nothing lost when the writer process is
killed, prompt interrupted marks when the application is killed, fork, and the close deadline.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from reliability_support import run_python, start_python, stop
from support import refuse_spans_where, wait_until

from otel_workflow import DuckDBSpanExporter, TraceStore, WorkflowSpanProcessor, WorkflowTracer, configure
from otel_workflow.model.errors import StoreError
from otel_workflow.storage.liveness import process_exists

# Columns that say which writer wrote a row, not what the span was.
_WRITER_COLUMNS = ("writer_id", "pid")


def _finished_spans(executions: int = 6, steps: int = 4) -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "orders"}), shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    wf = WorkflowTracer("orders", tracer_provider=provider)
    for number in range(executions):
        try:
            with wf.execution(trigger_type="test", triggered_by=f"user-{number}"):
                for index in range(steps):
                    with wf.step(f"step-{index}") as step:
                        step.span.set_attribute("order.number", number)
                        step.span.add_event("progress", {"index": index})
                        if number == 3 and index == steps - 1:
                            raise ValueError("out of stock")
        except ValueError:
            pass
    spans = list(memory.get_finished_spans())
    provider.shutdown()
    return spans


def _contents(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with TraceStore(path, read_only=True) as store:
        tables: dict[str, list[tuple[Any, ...]]] = {}
        for table in ("spans", "span_events", "span_links", "executions", "steps", "running_spans"):
            columns = [
                name
                for (name,) in store.sql(
                    "SELECT column_name FROM duckdb_columns() WHERE table_name = ? ORDER BY column_index",
                    [table],
                )
                if name not in _WRITER_COLUMNS
            ]
            tables[table] = sorted(store.sql(f"SELECT {', '.join(columns)} FROM {table}"), key=repr)
        return tables


def _store(path: Path, **options: Any) -> TraceStore:
    store = TraceStore(path, writer_process=True, **options)
    assert store.wait_for_writer_process()
    return store


def _writer_pid(store: TraceStore) -> int:
    pid = store.writer_pid
    assert pid is not None
    return pid


def test_the_rows_are_those_of_the_in_process_writer(tmp_path: Path) -> None:
    spans = _finished_spans()
    for name, writer_process in (("here.duckdb", False), ("child.duckdb", True)):
        with TraceStore(tmp_path / name, writer_process=writer_process) as store:
            for first in range(0, len(spans), 7):
                assert store.submit_spans(spans[first : first + 7])
            assert store.flush()
            assert store.dropped_spans == 0
    here, child = _contents(tmp_path / "here.duckdb"), _contents(tmp_path / "child.duckdb")
    assert len(child["spans"]) == len(spans)
    assert len(child["executions"]) == 6
    assert here == child


def test_a_separate_process_writes_and_stops_with_the_store(tmp_path: Path) -> None:
    store = _store(tmp_path / "t.duckdb")
    pid = _writer_pid(store)
    assert pid != os.getpid()
    assert process_exists(pid)
    assert store.submit_spans(_finished_spans(1))
    assert store.flush()
    # The application reads while the writer process keeps the file between cycles.
    assert store.sql("SELECT count(*) FROM spans") == [(5,)]
    assert len(store.executions()) == 1
    store.close()
    wait_until(lambda: not process_exists(pid), what="the writer process to end with the store")


def test_live_rows_show_a_running_execution_then_its_end(tmp_path: Path) -> None:
    store = _store(tmp_path / "t.duckdb", flush_interval_s=0.05)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(WorkflowSpanProcessor(store))
    provider.add_span_processor(BatchSpanProcessor(DuckDBSpanExporter(store), schedule_delay_millis=10))
    wf = WorkflowTracer("live", tracer_provider=provider)
    with wf.execution(trigger_type="live") as run, wf.step("waiting"):
        running = wait_until(
            lambda: [row for row in store.executions() if row.status == "running"],
            what="the running execution",
        )
        assert running[0].id == run.execution_id
        assert running[0].current_step == "waiting"
    provider.force_flush()
    store.flush()
    (ended,) = store.executions()
    assert ended.status == "completed"
    assert store.sql("SELECT count(*) FROM running_spans") == [(0,)]
    provider.shutdown()
    store.close()


def test_a_span_the_database_refuses_is_counted_and_the_rest_stored(tmp_path: Path) -> None:
    # A CHECK added by a user refuses one span: the writer process halves the batch until it is alone,
    # asking the store before each COMMIT; the store counts the one rejection.
    db = tmp_path / "t.duckdb"
    refuse_spans_where(db, "name NOT LIKE '%step-2'")
    spans = _finished_spans(1)
    store = _store(db)
    store.submit_spans(spans)
    assert store.flush()
    assert store.dropped_by_reason["rejected"] == 1
    assert store.sql("SELECT count(*) FROM spans") == [(len(spans) - 1,)]
    assert store.sql("SELECT count(*) FROM span_events") == [(3,)]
    store.close()


def test_a_killed_writer_process_is_replaced_and_loses_nothing(tmp_path: Path) -> None:
    spans = _finished_spans(30)
    store = _store(tmp_path / "t.duckdb")
    killed = []
    for first in range(0, len(spans), 10):
        if first == 40:  # between two writes: the next one finds the socket closed
            killed.append(_writer_pid(store))
            os.kill(killed[-1], signal.SIGKILL)
        if first == 100:  # in the middle of one: stopped with the batch sent, then killed
            killed.append(_writer_pid(store))
            os.kill(killed[-1], signal.SIGSTOP)
        store.submit_spans(spans[first : first + 10])
        if first == 100:
            time.sleep(0.3)
            os.kill(killed[-1], signal.SIGKILL)
        assert store.flush()
    assert store.dropped_spans == 0
    assert store.sql("SELECT count(*), count(DISTINCT span_id) FROM spans") == [(len(spans), len(spans))]
    assert store.sql("SELECT count(*) FROM executions") == [(30,)]
    assert _writer_pid(store) not in killed
    store.close()


_APPLICATION = """
import sys, time
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from otel_workflow import DuckDBSpanExporter, TraceStore, WorkflowSpanProcessor, WorkflowTracer, configure

store = TraceStore(sys.argv[1], writer_process=True, flush_interval_s=0.05)
store.wait_for_writer_process()
provider = TracerProvider()
provider.add_span_processor(WorkflowSpanProcessor(store))
provider.add_span_processor(BatchSpanProcessor(DuckDBSpanExporter(store), schedule_delay_millis=10))
wf = WorkflowTracer("killed", tracer_provider=provider)
for number in range(5):
    with wf.execution(trigger_type="done"):
        with wf.step("quick"):
            pass
provider.force_flush()
store.flush()
with wf.execution(trigger_type="never ends"):
    with wf.step("forever"):
        time.sleep(0.3)
        store.flush()
        print(store.writer_pid, flush=True)
        time.sleep(600)
"""


def test_a_killed_application_leaves_its_run_interrupted_and_no_writer_behind(tmp_path: Path) -> None:
    db = tmp_path / "t.duckdb"
    application = start_python(tmp_path, _APPLICATION, db)
    assert application.stdout is not None
    line = application.stdout.readline()
    assert line.strip().isdigit(), stop(application)
    writer_pid = int(line)
    application.send_signal(signal.SIGKILL)
    stop(application)
    # The writer process found its store gone: it marks what it wrote as running interrupted, and ends.
    wait_until(lambda: not process_exists(writer_pid), what="the writer process to end", timeout_s=30)
    with TraceStore(db, read_only=True) as reader:
        statuses = sorted(row.status for row in reader.executions())
        assert statuses == ["completed"] * 5 + ["failed"]
        (interrupted,) = [row for row in reader.executions() if row.status == "failed"]
        assert "interrupted" in (interrupted.error_message or "")


_FORKED = """
import json, os, sys
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from otel_workflow import DuckDBSpanExporter, TraceStore, WorkflowSpanProcessor, WorkflowTracer, configure

store = TraceStore(sys.argv[1], writer_process=True)
store.wait_for_writer_process()
provider = TracerProvider()
provider.add_span_processor(WorkflowSpanProcessor(store))
provider.add_span_processor(BatchSpanProcessor(DuckDBSpanExporter(store), schedule_delay_millis=10))
wf = WorkflowTracer("fork", tracer_provider=provider)

def work(who):
    for _ in range(10):
        with wf.execution(trigger_type=who):
            with wf.step("s"):
                pass

work("parent")
parent_writer = store.writer_pid
children = []
for index in range(2):
    pid = os.fork()
    if pid == 0:
        work(f"child-{index}")
        provider.shutdown()
        os._exit(0 if store.dropped_spans == 0 else 10)
    children.append(pid)
work("parent-after")
codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
provider.shutdown()
print(json.dumps({"codes": codes, "parent_writer": parent_writer, "dropped": store.dropped_spans}))
"""


def test_forked_children_write_through_writer_processes_of_their_own(tmp_path: Path) -> None:
    db = tmp_path / "t.duckdb"
    result = run_python(tmp_path, _FORKED, db)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["codes"] == [0, 0]
    assert report["dropped"] == 0
    with TraceStore(db, read_only=True) as reader:
        rows = reader.sql("SELECT trigger_type, count(*) FROM executions GROUP BY ALL ORDER BY 1")
    assert rows == [("child-0", 10), ("child-1", 10), ("parent", 10), ("parent-after", 10)]
    assert not process_exists(report["parent_writer"])


def test_without_a_python_to_start_it_writes_in_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    with caplog.at_level(logging.WARNING, logger="otel_workflow"):
        store = TraceStore(tmp_path / "t.duckdb", writer_process=True)
        assert not store.wait_for_writer_process()
        spans = _finished_spans(2)
        store.submit_spans(spans)
        assert store.flush()
        store.submit_spans(_finished_spans(1))
        assert store.flush()
    warnings = [record for record in caplog.records if "writer process" in record.getMessage()]
    assert len(warnings) == 1
    assert store.sql("SELECT count(*) FROM executions") == [(3,)]
    store.close()


def test_close_gives_up_on_a_stuck_writer_process_and_ends_it(tmp_path: Path) -> None:
    store = _store(tmp_path / "t.duckdb", shutdown_timeout_s=1.0)
    pid = _writer_pid(store)
    os.kill(pid, signal.SIGSTOP)  # a writer that never answers, as on a hung disk
    try:
        store.submit_spans(_finished_spans(2))
        started = time.monotonic()
        store.close()
        assert time.monotonic() - started < 10
        assert store.dropped_by_reason.get("shutdown", 0) > 0
        wait_until(lambda: not process_exists(pid), what="the stuck writer process to be killed")
    finally:
        if process_exists(pid):
            os.kill(pid, signal.SIGKILL)


def test_an_in_memory_database_cannot_have_a_writer_process() -> None:
    with pytest.raises(StoreError, match="needs a database file"):
        TraceStore(":memory:", writer_process=True)


def test_configure_with_a_writer_process_stores_runs_and_their_logs(tmp_path: Path) -> None:
    setup = configure(tmp_path / "t.duckdb", service_name="shop", writer_process=True)
    try:
        assert setup.store.wait_for_writer_process()
        wf = WorkflowTracer("orders", tracer_provider=setup.tracer_provider)
        with wf.execution(trigger_type="cron") as run, wf.step("reserve"):
            logging.getLogger("shop").warning("low stock for %s", "sku-42")
        assert setup.tracer_provider.force_flush()
        assert setup.logger_provider is not None and setup.logger_provider.force_flush()
        assert setup.store.flush(30)
        messages = [row.message for row in setup.store.logs(run.execution_id) if row.id.startswith("log:")]
        assert messages == ["low stock for sku-42"]
        pid = _writer_pid(setup.store)
    finally:
        setup.shutdown()
    wait_until(lambda: not process_exists(pid), what="the writer process to end at shutdown")
