"""Live rows of a process that died without shutting down (SIGKILL) do not show as running for ever:
the next writer of the file marks them interrupted. Rows of writers still alive are left alone, and
forked workers do not mark each other's rows. Real processes, a real file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from reliability_support import FORK_WARNING, start_python, stop

from otel_workflow import DuckDBSpanExporter, TraceStore, WorkflowTracer
from otel_workflow.storage import liveness

pytestmark = pytest.mark.skipif(not liveness.PLACE, reason="no boot id or pid namespace to tell processes by")

HEADER = """
import os, sys, time
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from otel_workflow import DuckDBSpanExporter, TraceStore, WorkflowSpanProcessor, WorkflowTracer

store = TraceStore(sys.argv[1], flush_interval_s=0.05)
provider = TracerProvider(shutdown_on_exit=False)
provider.add_span_processor(WorkflowSpanProcessor(store))
provider.add_span_processor(BatchSpanProcessor(DuckDBSpanExporter(store), schedule_delay_millis=10))
wf = WorkflowTracer("crash", tracer_provider=provider)


def stuck(report):
    # An execution on a step that never ends, its live rows written; then `report(execution id)`. Gone
    # without a word when its parent is (a test that failed half-way leaves no process behind).
    parent = os.getppid()
    with wf.execution(trigger_type="job") as run:
        with wf.step("stuck"):
            assert store.flush(30)
            report(run.execution_id)
            while os.getppid() == parent:
                time.sleep(0.2)
            os._exit(1)
"""

STUCK = (
    HEADER
    + """
stuck(lambda execution_id: print(execution_id, flush=True))
"""
)

# A pre-fork model: the store is made in the parent; the first worker gets stuck, the second runs an
# execution and shuts down cleanly (which marks its own live rows, and must mark only those).
FORKED = (
    HEADER
    + """
reading, writing = os.pipe()
first = os.fork()
if first == 0:
    stuck(lambda execution_id: os.write(writing, execution_id.encode() + b"\\n"))
    os._exit(0)
execution_id = os.read(reading, 100).decode().strip()
second = os.fork()
if second == 0:
    with wf.execution(trigger_type="quick"):
        with wf.step("quick"):
            pass
    provider.shutdown()
    store.close()
    os._exit(0)
os.waitpid(second, 0)
print(execution_id, first, flush=True)
time.sleep(600)
"""
)


def started(process: subprocess.Popen[str]) -> list[str]:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, stop(process)[1]
    return line.split()


def kill(pid: int, process: subprocess.Popen[str] | None = None) -> None:
    os.kill(pid, signal.SIGKILL)
    if process is not None:
        process.communicate(timeout=30)  # reaped (a zombie still answers signal 0), its pipes closed


def states(db: Path, execution_id: str) -> tuple[str, dict[str, str], str | None]:
    with TraceStore(db, read_only=True) as store:
        [(status, error)] = store.sql(
            "SELECT status, error_message FROM workflow_executions WHERE id = ?", [execution_id]
        )
        steps = dict(
            store.sql("SELECT step_name, status FROM execution_steps WHERE execution_id = ?", [execution_id])
        )
    return status, steps, error


def test_the_next_writer_marks_a_killed_writers_live_rows_interrupted(tmp_path: Path) -> None:
    db = tmp_path / "live.duckdb"
    child = start_python(tmp_path, STUCK, db)
    try:
        [execution_id] = started(child)
        assert states(db, execution_id)[:2] == ("running", {"stuck": "running"})
    finally:
        kill(child.pid, child)

    # Still running as far as the file knows: nobody has written since.
    assert states(db, execution_id)[:2] == ("running", {"stuck": "running"})
    TraceStore(db).close()  # a writer opens the file (an application restarted, the demo, the collector)

    status, steps, error = states(db, execution_id)
    assert (status, steps) == ("failed", {"stuck": "failed"})
    assert error is not None and "interrupted" in error


def test_a_writer_that_died_while_this_one_runs_is_found_when_it_opens_the_file_again(tmp_path: Path) -> None:
    db = tmp_path / "live.duckdb"
    store = TraceStore(db)  # opened while the other one is alive: nothing to mark then
    try:
        child = start_python(tmp_path, STUCK, db)
        try:
            [execution_id] = started(child)
        finally:
            kill(child.pid, child)
        assert states(db, execution_id)[0] == "running"
        provider = TracerProvider(shutdown_on_exit=False)
        provider.add_span_processor(SimpleSpanProcessor(DuckDBSpanExporter(store)))
        with WorkflowTracer("here", tracer_provider=provider).execution():
            pass
        assert store.flush(30)  # the writer opens the file for this
    finally:
        store.close()
    assert states(db, execution_id)[:2] == ("failed", {"stuck": "failed"})


def test_live_rows_of_a_writer_still_running_stay_running(tmp_path: Path) -> None:
    db = tmp_path / "live.duckdb"
    child = start_python(tmp_path, STUCK, db)
    try:
        [execution_id] = started(child)
        TraceStore(db).close()
        assert states(db, execution_id)[:2] == ("running", {"stuck": "running"})
    finally:
        kill(child.pid, child)


@pytest.mark.filterwarnings(FORK_WARNING)
def test_a_forked_worker_shutting_down_leaves_its_siblings_live_rows_running(tmp_path: Path) -> None:
    db = tmp_path / "live.duckdb"
    parent = start_python(tmp_path, FORKED, db)
    try:
        execution_id, stuck_pid = started(parent)
        try:
            assert states(db, execution_id)[:2] == ("running", {"stuck": "running"})
            TraceStore(db).close()  # and the liveness check judges the stuck worker alive
            assert states(db, execution_id)[:2] == ("running", {"stuck": "running"})
        finally:
            kill(int(stuck_pid))
    finally:
        kill(parent.pid, parent)
    with TraceStore(db, read_only=True) as store:
        quick = store.sql("SELECT status FROM workflow_executions WHERE trigger_type = 'quick'")
    assert quick == [("completed",)]


def test_a_process_that_exited_counts_as_gone_even_before_it_is_reaped() -> None:
    assert liveness.process_exists(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, still a zombie
        assert not liveness.process_exists(child.pid)
    finally:
        child.wait()
    assert not liveness.process_exists(child.pid)
