"""The writer keeps its connection while spans keep coming, and lets go when someone needs the file.

A process that keeps a DuckDB file open locks every other process out of it, so the connection kept
for speed must be given up when the writer has been idle for a while, when another process waits for
the file (also while the writer is idle), and when this process forks. These tests use real processes
and the real hand-over lock.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support import wait_until

from otel_workflow import TraceStore, WorkflowSpanProcessor, WorkflowTracer
from otel_workflow.storage import database as database_module
from otel_workflow.storage.connection import gate

_READER = textwrap.dedent(
    """
    import sys
    from otel_workflow import TraceStore
    store = TraceStore(sys.argv[1], read_only=True, lock_timeout_s=float(sys.argv[2]))
    print(store.sql("SELECT count(*) FROM spans")[0][0])
    """
)


def make_spans(executions: int) -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(WorkflowSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(memory))
    wf = WorkflowTracer("orders", tracer_provider=provider)
    for _ in range(executions):
        with wf.execution():
            for name in ("validate", "charge", "ship"):
                with wf.step(name):
                    pass
    spans = list(memory.get_finished_spans())
    provider.shutdown()
    return spans


def run_script(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`script` in a fresh interpreter that can import this test module."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])},
    )


def start_reader(db: Path, lock_timeout_s: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _READER, str(db), str(lock_timeout_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def submit_in_batches(store: TraceStore, spans: list[ReadableSpan]) -> None:
    for first in range(0, len(spans), 512):  # the way a BatchSpanProcessor hands them over
        store.submit_spans(spans[first : first + 512])


def test_an_idle_writer_lets_go_of_the_file_after_its_linger(tmp_path: Path) -> None:
    db = tmp_path / "wf.duckdb"
    store = TraceStore(db)
    spans = make_spans(2_000)  # 8,000 spans
    submit_in_batches(store, spans)
    assert store.flush(60)
    assert store._database.held is not None  # kept: more spans may come
    wait_until(lambda: store._database.held is None, timeout_s=10)
    # Let go: the reader has it at once, well within its half second.
    reader = start_reader(db, lock_timeout_s=0.5)
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    assert int(out) == len(spans)
    store.close()


def test_an_idle_writer_gives_the_file_to_a_waiting_process_before_its_linger_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "wf.duckdb"
    # A linger longer than the test: only the waiting reader can make the writer let go.
    monkeypatch.setattr(database_module, "_LINGER_S", 600.0)
    store = TraceStore(db)
    spans = make_spans(50)
    submit_in_batches(store, spans)
    assert store.flush(60)
    assert store._database.held is not None
    reader = start_reader(db, lock_timeout_s=30)
    try:
        out, err = reader.communicate(timeout=60)
    finally:
        reader.kill()
    assert reader.returncode == 0, err
    assert int(out) == len(spans)
    store.close()


def test_a_kept_connection_is_given_up_to_a_process_waiting_for_the_file(tmp_path: Path) -> None:
    db = tmp_path / "wf.duckdb"
    store = TraceStore(db)
    spans = make_spans(10)
    with store._database.writer_connection(keep=True) as connection:
        connection.execute("SELECT 1")
    assert store._database.held is not None  # kept for the next cycle
    reader = start_reader(db, lock_timeout_s=30)
    try:
        # The reader polls the hand-over lock and says it is waiting; the writer sees it after its cycle.
        wait_until(lambda: gate.wanted(str(db)), timeout_s=20)
        with store._database.writer_connection(keep=True) as connection:  # more to write, but someone waits
            connection.execute("SELECT 1")
        assert store._database.held is None
        out, err = reader.communicate(timeout=60)
    finally:
        reader.kill()
    assert reader.returncode == 0, err
    assert int(out) == 0
    store.submit_spans(spans)
    assert store.flush(30)
    assert store.sql("SELECT count(*) FROM spans")[0][0] == len(spans)
    store.close()


def test_the_kept_connection_is_closed_when_the_store_closes(tmp_path: Path) -> None:
    db = tmp_path / "wf.duckdb"
    store = TraceStore(db)
    with store._database.writer_connection(keep=True) as connection:
        connection.execute("SELECT 1")
    assert store._database.held is not None
    store.submit_spans(make_spans(5))
    store.close()
    assert store._database.held is None
    reader = start_reader(db, lock_timeout_s=0.5)
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    assert int(out) == 20


_FORK_WHILE_KEPT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from test_writer_connection import make_spans
    from otel_workflow import TraceStore

    folder = Path(sys.argv[1])
    store = TraceStore(folder / "parent.duckdb")
    with store._database.writer_connection(keep=True) as connection:
        connection.execute("SELECT 1")
    assert store._database.held is not None
    # The writer lets go when its next cycle sees the fork waiting; these spans make that cycle.
    store.submit_spans(make_spans(5))
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: nothing inherited, a store of its own
        code = 1
        try:
            assert store._database.held is None
            child = TraceStore(folder / "child.duckdb")
            child.submit_spans(make_spans(2))
            child.close()
            code = 0 if child.dropped_spans == 0 else 2
        finally:
            os._exit(code)
    waited = time.monotonic() - started
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    store.close()
    print(code, round(waited, 3), store.dropped_spans)
    """
)


def test_a_fork_waits_for_the_kept_connection_and_the_child_starts_without_it(tmp_path: Path) -> None:
    done = run_script(_FORK_WHILE_KEPT, str(tmp_path))
    assert done.returncode == 0, done.stderr
    code, waited, dropped = done.stdout.split()
    assert (code, dropped) == ("0", "0")
    # Well within the 10 s the fork would wait for a connection that is never let go.
    assert float(waited) < 5
    for name, spans in (("parent", 20), ("child", 8)):
        reader = TraceStore(tmp_path / f"{name}.duckdb", read_only=True)
        assert reader.sql("SELECT count(*) FROM spans")[0][0] == spans


def test_a_busy_writer_still_closes_the_file_now_and_then(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each close gives back the DuckDB instance's memory (rows logged since the last checkpoint,
    blocks read): a writer that never went idle kept all of it (benchmarks/memory.py, 10M spans)."""
    monkeypatch.setattr(database_module, "_MAX_HOLD_S", 0.3)
    store = TraceStore(tmp_path / "wf.duckdb", flush_interval_s=0.05)
    spans = make_spans(400)
    opened: set[float] = set()  # when each connection the writer kept was opened
    deadline = time.monotonic() + 10
    for first in range(0, len(spans), 40):  # a steady stream for about 2 s: never idle for the linger
        store.submit_spans(spans[first : first + 40])
        time.sleep(0.05)
        if store._database.held is not None:
            opened.add(store._database.held_since)
        if len(opened) >= 3 or time.monotonic() > deadline:
            break
    assert len(opened) >= 3, opened
    assert store.flush(30)
    assert store.sql("SELECT count(*) FROM spans")[0][0] <= len(spans)
    store.close()


_EXIT_WHILE_KEPT = textwrap.dedent(
    """
    import sys
    from test_writer_connection import make_spans
    from otel_workflow import TraceStore

    store = TraceStore(sys.argv[1])
    store.submit_spans(make_spans(50))
    assert store.flush(30)
    assert store._database.held is not None  # kept: the process exits within the linger, store not closed
    """
)


def test_exiting_while_the_writer_keeps_the_file_closes_it_cleanly(tmp_path: Path) -> None:
    # A DuckDB connection still open while the interpreter finalises aborted the process ("terminate
    # called after throwing..."): the exit hook must wait until the writer has let go of the file.
    db = tmp_path / "wf.duckdb"
    for _ in range(3):
        done = run_script(_EXIT_WHILE_KEPT, str(db))
        assert done.returncode == 0, done.stderr
    reader = TraceStore(db, read_only=True)
    assert reader.sql("SELECT count(*) FROM spans")[0][0] == 3 * 200
