"""Issue 6, item 2: a writer killed with SIGKILL in the middle of heavy ingestion leaves a database that
opens, passes DuckDB's own checks, and holds only whole batches.

What "whole" means for our writer: it stores a write cycle in one transaction, and a cycle holds whole
`export()` calls (it never splits one). The child here exports each execution (the execution span, its
steps, an HTTP span under each step, with events and links) in one `export()` call, so after any crash
every stored execution has every one of its spans, events and links, or none of them. A second child
exports through the SDK's BatchSpanProcessor, whose batches cut across executions: there the check is
that no span is stored without all of its events and links, and no row is stored twice.

Each round kills a new child at a random moment and continues on the same file, so later rounds also
recover from earlier crashes.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
from reliability_support import check_database, start_python, stop
from support import wait_until

from otel_workflow import TraceStore

STEPS = 5
SPANS_PER_EXECUTION = 1 + 2 * STEPS

WRITER = """
import sys, time
from pathlib import Path
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link
from otel_workflow import DuckDBSpanExporter, TraceStore, WorkflowSpanProcessor, WorkflowTracer

db, mode, progress, STEPS = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
store = TraceStore(db, flush_interval_s=0.05)
exporter = DuckDBSpanExporter(store)
provider = TracerProvider(resource=Resource.create({"service.name": "crash"}), shutdown_on_exit=False)
provider.add_span_processor(WorkflowSpanProcessor(store))
memory = InMemorySpanExporter()
if mode == "whole":
    provider.add_span_processor(SimpleSpanProcessor(memory))
else:
    provider.add_span_processor(
        BatchSpanProcessor(exporter, schedule_delay_millis=10, max_export_batch_size=97)
    )
wf = WorkflowTracer("crash", tracer_provider=provider)
payload = "x" * 2048  # heavier rows, bigger write cycles and checkpoints
done = 0
while True:
    with wf.execution(trigger_type=mode) as run:
        for index in range(STEPS):
            with wf.step(f"s{index}") as step:
                step.span.set_attribute("payload", payload)
                step.span.set_attribute("expected.events", 2)
                step.span.add_event("first", {"n": index})
                step.span.add_event("second")
                with wf.otel_tracer.start_as_current_span(
                    "GET /x", links=[Link(run.span.get_span_context(), {"why": "test"})]
                ) as http:
                    http.set_attribute("expected.links", 1)
    if mode == "whole":
        exporter.export(list(memory.get_finished_spans()))  # one execution, one export call
        memory.clear()
    done += 1
    if done % 20 == 0:
        progress.write_text(str(done))
"""


def kill_rounds(tmp_path: Path, mode: str, rounds: int, seed: int) -> None:
    db = tmp_path / "crash.duckdb"
    rng = random.Random(seed)
    stored_before = 0
    for round_number in range(rounds):
        progress = tmp_path / f"progress-{round_number}"
        child = start_python(tmp_path, WRITER, db, mode, progress, STEPS)
        try:
            wait_until(
                lambda: progress.exists() or child.poll() is not None,  # noqa: B023 - used at once
                timeout_s=60,
                what="the writer to get going",
            )
            assert child.poll() is None, stop(child)[1]
            # Once this round has committed something, kill it somewhere in a write, a checkpoint, or
            # between them.
            wait_until(
                lambda: stored_spans(db) > stored_before,  # noqa: B023 - used at once
                timeout_s=60,
                what="the writer to commit something",
            )
            time.sleep(rng.uniform(0.0, 0.5))
            child.send_signal(signal.SIGKILL)
        finally:
            if child.poll() is None:
                child.kill()
            stop(child)
        assert child.returncode == -signal.SIGKILL
        stored = verify(db, mode)
        assert stored > stored_before, "a crash lost data committed before it"
        stored_before = stored


def stored_spans(db: Path) -> int:
    with TraceStore(db, read_only=True) as reader:
        return int(reader.sql("SELECT count(*) FROM spans")[0][0])


SAME_SPAN = "s.trace_id = x.trace_id AND s.span_id = x.span_id"

# Every span with all of its events and links (the writer stamps how many it made).
MISSING_CHILDREN = f"""
SELECT count(*) FROM spans s
WHERE coalesce((s.attributes ->> 'expected.events')::INTEGER, 0)
      <> (SELECT count(*) FROM span_events x WHERE {SAME_SPAN})
   OR coalesce((s.attributes ->> 'expected.links')::INTEGER, 0)
      <> (SELECT count(*) FROM span_links x WHERE {SAME_SPAN})
"""

INCOMPLETE_EXECUTIONS = """
SELECT e.id FROM workflow_executions e JOIN execution_steps s ON s.execution_id = e.id
WHERE e.status = 'completed' GROUP BY e.id
HAVING count(*) <> ? OR min(s.sequence_num) <> 1 OR max(s.sequence_num) <> ?
    OR bool_or(s.status <> 'completed')
"""


def verify(db: Path, mode: str) -> int:
    """DuckDB's checks, then ours; returns the number of spans stored."""
    tables = check_database(db)
    # It also opens as a store (for writing and for reading) and answers queries.
    with TraceStore(db) as store:
        store.executions(limit=5)
    with TraceStore(db, read_only=True) as store:
        sql = store.sql
        # No half-written rows: every span has all of its events and links, nothing is stored twice.
        assert sql("SELECT count(*) - count(DISTINCT (trace_id, span_id)) FROM spans") == [(0,)]
        events = "SELECT count(*) - count(DISTINCT (trace_id, span_id, event_index)) FROM span_events"
        assert sql(events) == [(0,)]
        assert sql(MISSING_CHILDREN) == [(0,)]
        assert sql(f"SELECT count(*) FROM span_events x ANTI JOIN spans s ON {SAME_SPAN}") == [(0,)]
        # A live row goes in the same transaction as the ended span that replaces it.
        assert sql(f"SELECT count(*) FROM running_spans x SEMI JOIN spans s ON {SAME_SPAN}") == [(0,)]
        if mode == "whole":
            # Whole batches: an execution is there with all its spans, or not at all.
            per_execution = "SELECT execution_id, count(*) FROM spans GROUP BY ALL HAVING count(*) <> ?"
            assert sql(per_execution, [SPANS_PER_EXECUTION]) == []
            executions = sql("SELECT count(DISTINCT execution_id) FROM spans")[0][0]
            completed = sql("SELECT count(*) FROM workflow_executions WHERE status = 'completed'")
            assert completed == [(executions,)]
            assert sql(INCOMPLETE_EXECUTIONS, [STEPS, STEPS]) == []
    return int(tables["spans"])


def test_sigkill_during_ingestion_leaves_whole_executions(tmp_path: Path) -> None:
    kill_rounds(tmp_path, "whole", rounds=1, seed=6)


def test_sigkill_during_batched_ingestion_leaves_no_half_written_rows(tmp_path: Path) -> None:
    kill_rounds(tmp_path, "batched", rounds=1, seed=7)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["whole", "batched"])
def test_sigkill_again_and_again(tmp_path: Path, mode: str) -> None:
    kill_rounds(tmp_path, mode, rounds=12, seed=66)
