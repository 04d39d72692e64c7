"""Issue 6, item 3: when spans come faster than they can be stored, memory stays bounded, the application
never waits, what is dropped is counted (attribute, metric) and logged once per interval, and executions
are dropped whole rather than stored without some of their steps.

"Faster than they can be stored" is made real by another process holding the database file, so the
writer cannot write at all until the test lets go (or by a queue too small for the write interval).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from reliability_support import check_database, lock_held, run_python

from otel_workflow import DuckDBSpanExporter, TraceStore, WorkflowSpanProcessor, WorkflowTracer
from otel_workflow.ingest.drops import DROPPED_METRIC, register_drop_metric

STEPS = 4


@dataclass
class Setup:
    store: TraceStore
    provider: TracerProvider
    exporting: SpanProcessor
    wf: WorkflowTracer

    def exported(self) -> None:
        """Hand every ended span to the store (without waiting for the store to write them)."""
        assert self.exporting.force_flush()

    def run_executions(self, count: int, bound: int) -> int:
        """Run `count` executions of STEPS steps (each step with an HTTP child span); spans made."""
        for _ in range(count):
            with self.wf.execution(trigger_type="load"):
                for index in range(STEPS):
                    with self.wf.step(f"s{index}"), self.wf.otel_tracer.start_as_current_span("GET /x"):
                        pass
            # The queue never holds more than its bound, whatever the load.
            assert self.store.queued <= bound
        return count * (1 + 2 * STEPS)


def make_setup(db: Path, *, bound: int, batch: bool, interval_s: float = 60.0) -> Setup:
    store = TraceStore(db, max_queued_spans=bound, drop_log_interval_s=interval_s)
    provider = TracerProvider(resource=Resource.create({"service.name": "load"}), shutdown_on_exit=False)
    provider.add_span_processor(WorkflowSpanProcessor(store))
    exporting: SpanProcessor = (
        BatchSpanProcessor(DuckDBSpanExporter(store), schedule_delay_millis=20, max_queue_size=100_000)
        if batch
        else SimpleSpanProcessor(DuckDBSpanExporter(store))  # each span reaches the store as it ends
    )
    provider.add_span_processor(exporting)
    return Setup(store, provider, exporting, WorkflowTracer("load", tracer_provider=provider))


@pytest.fixture
def drops_logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.WARNING, logger="otel_workflow")
    yield caplog


def drop_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "otel-workflow dropped" in r.getMessage()]


def assert_whole_executions(store: TraceStore, produced: int) -> tuple[int, int]:
    """Every stored execution has all its steps, nothing is half stored, and stored + dropped adds up.

    Returns (executions stored, spans stored)."""
    stored = store.sql("SELECT count(*) FROM spans")[0][0]
    assert stored + store.dropped_spans == produced
    assert store.dropped_by_reason["queue_full"] == store.dropped_spans
    partial = store.sql(
        "SELECT e.id, count(s.id) FROM workflow_executions e LEFT JOIN execution_steps s "
        "ON s.execution_id = e.id GROUP BY e.id HAVING count(s.id) <> ?",
        [STEPS],
    )
    assert partial == []
    # No step (and no HTTP span) is stored without its execution: the dropped ones went whole.
    orphans = store.sql(
        "SELECT count(*) FROM spans s WHERE s.execution_id IS NOT NULL AND NOT EXISTS "
        "(SELECT 1 FROM workflow_executions e WHERE e.id = s.execution_id)"
    )
    assert orphans == [(0,)]
    # Nothing of a dropped execution shows as running: its live rows were deleted with it.
    assert store.sql("SELECT count(*) FROM running_spans") == [(0,)]
    executions = store.sql("SELECT count(*) FROM workflow_executions WHERE status = 'completed'")[0][0]
    assert executions * (1 + 2 * STEPS) == stored
    return executions, stored


@pytest.mark.parametrize("batch", [False, True], ids=["span-by-span", "batch-processor"])
def test_a_writer_that_cannot_write_drops_whole_executions_counts_and_logs_once(
    tmp_path: Path, drops_logged: pytest.LogCaptureFixture, batch: bool
) -> None:
    db = tmp_path / "traces.duckdb"
    bound = 500
    setup = make_setup(db, bound=bound, batch=batch)
    with lock_held(tmp_path, db):
        # The application finishes all its work while the file is held: it never waited for storage.
        produced = setup.run_executions(300, bound)
        setup.exported()
        assert setup.store.dropped_spans > 0
        assert setup.store.queued <= bound
        assert len(drop_messages(drops_logged)) == 1
    assert setup.store.flush(30)
    executions, _ = assert_whole_executions(setup.store, produced)
    assert 0 < executions < 300
    message = drop_messages(drops_logged)[0]
    assert "because the write queue was full" in message
    assert "execution(s) dropped whole, 0 left incomplete" in message
    setup.provider.shutdown()
    setup.store.close()
    check_database(db)


def test_concurrent_producers_outrunning_a_small_queue(
    tmp_path: Path, drops_logged: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "traces.duckdb"
    bound = 300
    setup = make_setup(db, bound=bound, batch=True)
    produced: list[int] = []

    def producer() -> None:
        produced.append(setup.run_executions(60, bound))

    with lock_held(tmp_path, db):
        threads = [threading.Thread(target=producer) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert len(produced) == 8
        setup.exported()
    assert setup.store.flush(30)
    executions, _ = assert_whole_executions(setup.store, sum(produced))
    assert executions > 0
    assert len(drop_messages(drops_logged)) == 1
    setup.provider.shutdown()
    setup.store.close()


def test_a_queue_smaller_than_one_write_interval_still_adds_up(tmp_path: Path) -> None:
    # No lock: the writer works, but 1 s between writes and 60 places in the queue cannot keep up.
    db = tmp_path / "traces.duckdb"
    store = TraceStore(db, max_queued_spans=60, flush_interval_s=1.0)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(WorkflowSpanProcessor(store))
    exporting = SimpleSpanProcessor(DuckDBSpanExporter(store))
    provider.add_span_processor(exporting)
    setup = Setup(store, provider, exporting, WorkflowTracer("load", tracer_provider=provider))
    produced = setup.run_executions(200, 60)
    assert store.flush(30)
    assert store.dropped_spans > 0
    assert_whole_executions(store, produced)
    provider.shutdown()
    store.close()


def test_drops_are_logged_at_most_once_per_interval(
    tmp_path: Path, drops_logged: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "traces.duckdb"
    setup = make_setup(db, bound=50, batch=False, interval_s=0.3)
    with lock_held(tmp_path, db):
        setup.run_executions(40, 50)
        first = setup.store.dropped_spans
        assert first > 0
        assert len(drop_messages(drops_logged)) == 1
        threading.Event().wait(0.4)
        setup.run_executions(40, 50)
        assert setup.store.dropped_spans > first
        messages = drop_messages(drops_logged)
        assert len(messages) == 2
        # The second report came with the first drop after the interval, and counts all since the start.
        since_start = int(messages[1].split(" dropped since start")[0].rsplit(" ", 1)[1])
        assert first < since_start <= setup.store.dropped_spans
    setup.provider.shutdown()
    setup.store.close()


def test_no_drops_no_messages(tmp_path: Path, drops_logged: pytest.LogCaptureFixture) -> None:
    setup = make_setup(tmp_path / "traces.duckdb", bound=1000, batch=True, interval_s=0.0)
    produced = setup.run_executions(20, 1000)
    setup.provider.shutdown()
    assert setup.store.dropped_spans == 0
    assert setup.store.sql("SELECT count(*) FROM spans") == [(produced,)]
    setup.store.close()
    assert drop_messages(drops_logged) == []


def test_dropped_spans_metric_through_an_explicit_meter_provider(tmp_path: Path) -> None:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    register_drop_metric(meters)
    register_drop_metric(meters)  # idempotent
    db = tmp_path / "traces.duckdb"
    setup = make_setup(db, bound=30, batch=False)
    with lock_held(tmp_path, db):
        setup.run_executions(20, 30)
    dropped = setup.store.dropped_spans
    assert dropped > 0
    points = {
        (p.attributes["otel_workflow.database"], p.attributes["otel_workflow.reason"]): p.value
        for metric in _metrics(reader)
        for p in metric.data.data_points
    }
    assert points[(str(db), "queue_full")] == dropped
    assert points[(str(db), "write_failed")] == 0
    setup.provider.shutdown()
    setup.store.close()
    meters.shutdown()


def _metrics(reader: InMemoryMetricReader) -> list[object]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == DROPPED_METRIC
    ]


GLOBAL_METRICS = """
import json, sys
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from otel_workflow import TraceStore

store = TraceStore(sys.argv[1], max_queued_spans=10)
store.close_writer()
store.submit_spans([object()] * 3)  # after shutdown: dropped and counted
# Metrics configured after the store was made: the counter still appears (global proxy meter).
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
points = [
    (dict(p.attributes), p.value)
    for rm in reader.get_metrics_data().resource_metrics
    for sm in rm.scope_metrics
    for m in sm.metrics
    if m.name == "otel_workflow.spans.dropped"
    for p in m.data.data_points
]
print(json.dumps(points))
"""


def test_dropped_spans_metric_through_the_global_meter_provider(tmp_path: Path) -> None:
    done = run_python(tmp_path, GLOBAL_METRICS, tmp_path / "traces.duckdb")
    assert done.returncode == 0, done.stderr
    points = json.loads(done.stdout.strip().splitlines()[-1])
    by_reason = {attributes["otel_workflow.reason"]: value for attributes, value in points}
    assert by_reason["shutdown"] == 3
    assert by_reason["queue_full"] == 0
