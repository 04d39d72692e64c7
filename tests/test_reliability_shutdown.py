"""Issue 6, item 1: a process that ends normally has every ended span in the database, and shutdown is
bounded (a lock that is never released cannot hang it past its timeout) and idempotent.

Each ending runs in a real child process: return from main, `sys.exit`, and SIGTERM with a handler that
exits cleanly; each with `configure()`, a hand-built provider, and an exporter that opened its own store.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from reliability_support import check_database, count, lock_held, run_python, start_python, stop
from support import wait_until

from otel_workflow import DuckDBSpanExporter, TraceStore, WorkflowSpanProcessor, WorkflowTracer

EXECUTIONS = 20
STEPS = 3

CHILD = """
import os, signal, sys, time
from pathlib import Path

db, setup, ending, workdir = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
EXECUTIONS, STEPS = int(sys.argv[5]), int(sys.argv[6])

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from otel_workflow import DuckDBSpanExporter, TraceStore, WorkflowSpanProcessor, WorkflowTracer, configure

if setup == "configure":
    telemetry = configure(db, service_name="shutdown-test")
    provider = telemetry.tracer_provider
elif setup == "hand-built":
    store = TraceStore(db)
    # The SDK's default 5 s export delay: at exit most spans are still in the batch processor's queue.
    provider = TracerProvider(resource=Resource.create({"service.name": "shutdown-test"}))
    provider.add_span_processor(WorkflowSpanProcessor(store))
    provider.add_span_processor(BatchSpanProcessor(DuckDBSpanExporter(store)))
elif setup == "exporter-path":
    provider = TracerProvider(resource=Resource.create({"service.name": "shutdown-test"}))
    provider.add_span_processor(BatchSpanProcessor(DuckDBSpanExporter(db)))
else:
    raise SystemExit(f"unknown setup {setup}")

wf = WorkflowTracer("shutdown", tracer_provider=provider)


def on_sigterm(signum, frame):
    sys.exit(0)


def main():
    if ending == "sigterm":
        signal.signal(signal.SIGTERM, on_sigterm)
    for _ in range(EXECUTIONS):
        with wf.execution(trigger_type=ending):
            for index in range(STEPS):
                with wf.step(f"s{index}"):
                    pass
    # Left open at exit: it never ends, so it is not an ended span; its live row must not stay `running`.
    wf.execution(trigger_type="left-open").__enter__()
    if ending == "sys.exit":
        sys.exit(0)
    if ending == "sigterm":
        (workdir / "ready").touch()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.01)
        sys.exit(5)  # the signal never came
    return


if __name__ == "__main__":
    main()
"""


@pytest.mark.parametrize(
    ("setup", "ending"),
    [
        ("configure", "return"),
        ("configure", "sys.exit"),
        ("configure", "sigterm"),
        ("hand-built", "return"),
        ("hand-built", "sigterm"),
        ("exporter-path", "sys.exit"),
    ],
)
def test_every_ended_span_is_stored_when_the_process_ends_normally(
    tmp_path: Path, setup: str, ending: str
) -> None:
    db = tmp_path / "traces.duckdb"
    args = (db, setup, ending, tmp_path, EXECUTIONS, STEPS)
    if ending == "sigterm":
        process = start_python(tmp_path, CHILD, *args)
        wait_until(
            lambda: (tmp_path / "ready").exists() or process.poll() is not None,
            timeout_s=60,
            what="the child to finish its executions",
        )
        process.send_signal(signal.SIGTERM)
        _, err = stop(process, 60)
        returncode = process.returncode
    else:
        done = run_python(tmp_path, CHILD, *args, timeout=120)
        err, returncode = done.stderr, done.returncode
    assert returncode == 0, err
    assert "Traceback" not in err, err
    assert "dropped" not in err, err

    check_database(db)
    ended = "trigger_type = ?"
    assert count(db, f"SELECT count(*) FROM workflow_executions WHERE {ended}", [ending]) == EXECUTIONS
    assert (
        count(
            db,
            "SELECT count(*) FROM execution_steps s JOIN workflow_executions e ON e.id = s.execution_id "
            f"WHERE e.{ended} AND s.status = 'completed'",
            [ending],
        )
        == EXECUTIONS * STEPS
    )
    assert count(db, "SELECT count(*) FROM spans") == EXECUTIONS * (STEPS + 1)
    # The execution left open is not shown as running after a clean exit: interrupted, or (with no
    # processor writing live rows) absent.
    assert count(db, "SELECT count(*) FROM workflow_executions WHERE status = 'running'") == 0
    if setup != "exporter-path":
        assert count(db, "SELECT count(*) FROM running_spans WHERE interrupted_at IS NOT NULL") == 1


def _traced(store: TraceStore) -> tuple[TracerProvider, WorkflowTracer]:
    provider = TracerProvider(resource=Resource.create({"service.name": "stuck"}), shutdown_on_exit=False)
    provider.add_span_processor(WorkflowSpanProcessor(store))
    provider.add_span_processor(BatchSpanProcessor(DuckDBSpanExporter(store), schedule_delay_millis=50))
    return provider, WorkflowTracer("stuck", tracer_provider=provider)


def test_shutdown_is_bounded_when_another_process_never_releases_the_file(tmp_path: Path) -> None:
    db = tmp_path / "traces.duckdb"
    timeout_s = 2.0
    store = TraceStore(db, shutdown_timeout_s=timeout_s)
    provider, wf = _traced(store)
    with lock_held(tmp_path, db):
        for _ in range(10):
            with wf.execution(trigger_type="stuck"), wf.step("a"):
                pass
        started = time.monotonic()
        provider.shutdown()
        took = time.monotonic() - started
        # Bounded by the store's shutdown timeout (the bound asserted is generous; it is not a speed test).
        assert took < timeout_s + 10, took
        assert store.dropped_spans == 20
        assert store.dropped_by_reason["shutdown"] == 20
        # Idempotent: nothing left to wait for, nothing counted twice.
        started = time.monotonic()
        provider.shutdown()
        store.close_writer()
        store.close()
        store.close()
        assert time.monotonic() - started < 5
        assert store.dropped_spans == 20
    # Nothing of the abandoned batch reached the file, and the file is sound.
    assert check_database(db)["spans"] == 0


def test_close_is_bounded_and_a_later_store_writes_normally(tmp_path: Path) -> None:
    db = tmp_path / "traces.duckdb"
    store = TraceStore(db, shutdown_timeout_s=30.0)
    provider, wf = _traced(store)
    with lock_held(tmp_path, db):
        with wf.execution(trigger_type="stuck"), wf.step("a"):
            pass
        # Two live rows and two ended spans wait for the file (force_flush would wait for it too).
        wait_until(lambda: store.queued == 4, what="the ended spans to reach the store's queue")
        started = time.monotonic()
        assert store.close_writer(timeout_s=1.0) is False  # an explicit timeout shortens the budget
        assert time.monotonic() - started < 1.0 + 10
        assert store.dropped_spans == 2
    provider.shutdown()
    store.close()
    with TraceStore(db) as again:
        provider, wf = _traced(again)
        with wf.execution(trigger_type="later"), wf.step("a"):
            pass
        provider.shutdown()
        assert again.dropped_spans == 0
        assert again.sql("SELECT trigger_type, status FROM workflow_executions") == [("later", "completed")]


EXIT_STUCK = """
import sys, time
from pathlib import Path
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from otel_workflow import DuckDBSpanExporter, TraceStore, WorkflowSpanProcessor, WorkflowTracer

db, workdir = sys.argv[1], Path(sys.argv[2])
store = TraceStore(db, shutdown_timeout_s=2.0)
provider = TracerProvider(resource=Resource.create({"service.name": "exit"}))
provider.add_span_processor(WorkflowSpanProcessor(store))
provider.add_span_processor(BatchSpanProcessor(DuckDBSpanExporter(store)))
wf = WorkflowTracer("exit", tracer_provider=provider)
(workdir / "opened").touch()
while not (workdir / "go").exists():
    time.sleep(0.01)
for _ in range(10):
    with wf.execution(), wf.step("a"):
        pass
print(time.monotonic(), flush=True)
"""


def test_interpreter_exit_is_bounded_when_the_file_stays_locked(tmp_path: Path) -> None:
    db = tmp_path / "traces.duckdb"
    child = start_python(tmp_path, EXIT_STUCK, db, tmp_path)
    try:
        wait_until(
            lambda: (tmp_path / "opened").exists() or child.poll() is not None,
            timeout_s=60,
            what="the child to open its store",
        )
        with lock_held(tmp_path, db):
            (tmp_path / "go").touch()
            out, err = stop(child, 60)
            exited = time.monotonic()
    finally:
        if child.poll() is None:
            child.kill()
            stop(child)
    assert child.returncode == 0, err
    finished_tracing = float(out.strip().splitlines()[-1])
    # The exit waited for the lock at most about the store's 2 s shutdown timeout (generous bound).
    assert exited - finished_tracing < 2.0 + 10
    # The loss is reported, once.
    assert err.count("otel-workflow dropped") == 1, err
    assert "20 at shutdown" in err, err


def test_provider_shutdown_twice_and_export_after_it(tmp_path: Path) -> None:
    db = tmp_path / "traces.duckdb"
    store = TraceStore(db)
    provider, wf = _traced(store)
    with wf.execution(), wf.step("a"):
        pass
    provider.shutdown()
    provider.shutdown()
    exporter = DuckDBSpanExporter(store)
    exporter.shutdown()
    exporter.shutdown()
    assert exporter.force_flush() is True
    store.close()
    store.close()
    assert store.dropped_spans == 0
    assert check_database(db)["spans"] == 2
