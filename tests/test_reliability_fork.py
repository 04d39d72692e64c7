"""Issue 6, item 4: the pre-fork server model. A parent makes the provider and the store, forks 4
workers, each traces work and ends with `provider.shutdown()`; every worker's spans are stored, and no
child ever writes through a DuckDB database instance it inherited from its parent.

The parent runs in a child process of the test (forking pytest itself would copy its threads). It keeps
its own writer and a reader thread busy while it forks, so that forks meet open connections.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
from reliability_support import check_database, count, run_python

WORKERS = 4
EXECUTIONS = 25
STEPS = 3

COMMON = """
import json, os, sys, threading, time
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from otel_workflow import DuckDBSpanExporter, TraceStore, WorkflowSpanProcessor, WorkflowTracer

db, mode = sys.argv[1], sys.argv[2]
WORKERS, EXECUTIONS, STEPS = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])

store = TraceStore(db)
provider = TracerProvider(resource=Resource.create({"service.name": "server"}))
provider.add_span_processor(WorkflowSpanProcessor(store))
provider.add_span_processor(BatchSpanProcessor(DuckDBSpanExporter(store), schedule_delay_millis=20))
wf = WorkflowTracer("server", tracer_provider=provider)


def work(who, executions=EXECUTIONS):
    for _ in range(executions):
        with wf.execution(trigger_type=who):
            for index in range(STEPS):
                with wf.step(f"s{index}"):
                    pass


def worker(index):
    work(f"worker-{index}")
    provider.shutdown()  # flushes the batch processor; the exporter then closes the store's writer
    return store.dropped_spans


# The parent is busy: its writer writes, and a reader thread keeps opening the file, while it forks.
stop = threading.Event()


def read_continuously():
    while not stop.wait(0.005):
        store.sql("SELECT count(*) FROM spans")


reader = threading.Thread(target=read_continuously, daemon=True)
reader.start()
work("parent-before", 10)
"""

OS_FORK = (
    COMMON
    + """
children = []
for index in range(WORKERS):
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            dropped = worker(index)
            code = 0 if dropped == 0 else 10
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 11
        finally:
            os._exit(code)
    children.append(pid)
    work("parent-between", 2)
codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
work("parent-after", 5)
stop.set()
reader.join()
provider.shutdown()
print(json.dumps({"codes": codes, "dropped": store.dropped_spans}))
"""
)

MULTIPROCESSING = (
    COMMON
    + """
import multiprocessing


def run(index, results):
    results.put((index, worker(index)))


if __name__ == "__main__":
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    processes = [context.Process(target=run, args=(index, results)) for index in range(WORKERS)]
    for process in processes:
        process.start()
        work("parent-between", 2)
    reported = dict(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(120)
    codes = [process.exitcode for process in processes]
    codes += [0 if reported[index] == 0 else 10 for index in range(WORKERS)]
    work("parent-after", 5)
    stop.set()
    reader.join()
    provider.shutdown()
    print(json.dumps({"codes": codes, "dropped": store.dropped_spans}))
"""
)


def run_server(tmp_path: Path, code: str) -> tuple[Path, dict[str, Any]]:
    db = tmp_path / "traces.duckdb"
    done = run_python(tmp_path, code, db, "fork", WORKERS, EXECUTIONS, STEPS, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return db, report


def assert_every_worker_stored(db: Path, report: dict[str, Any]) -> None:
    assert set(report["codes"]) == {0}, report
    assert report["dropped"] == 0
    check_database(db)
    per_trigger = dict(
        _rows(db, "SELECT trigger_type, count(*) FROM workflow_executions GROUP BY trigger_type")
    )
    expected = {f"worker-{index}": EXECUTIONS for index in range(WORKERS)}
    expected |= {"parent-before": 10, "parent-between": 2 * WORKERS, "parent-after": 5}
    assert per_trigger == expected
    assert count(db, "SELECT count(*) FROM workflow_executions WHERE status <> 'completed'") == 0
    steps = count(db, "SELECT count(*) FROM execution_steps WHERE status = 'completed'")
    assert steps == sum(expected.values()) * STEPS
    assert count(db, "SELECT count(*) FROM running_spans") == 0
    # Each worker wrote from a process of its own (live rows carry the writer's pid while they live;
    # the spans carry nothing of it, so the check is that all of them arrived, above).


def _rows(db: Path, query: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(db), read_only=True) as connection:
        return connection.execute(query).fetchall()


def test_os_fork_workers_store_every_span(tmp_path: Path) -> None:
    db, report = run_server(tmp_path, OS_FORK)
    assert_every_worker_stored(db, report)


def test_multiprocessing_fork_workers_store_every_span(tmp_path: Path) -> None:
    db, report = run_server(tmp_path, MULTIPROCESSING)
    assert_every_worker_stored(db, report)


INHERITED = """
import json, os, sys
import otel_workflow.storage.connection as connection_module
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from otel_workflow import DuckDBSpanExporter, TraceStore, WorkflowTracer

connection_module._FORK_WAIT_S = 0.2  # do not wait the full 10 s for the connection held below
db = sys.argv[1]
store = TraceStore(db)
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(DuckDBSpanExporter(store)))
wf = WorkflowTracer("inherited", tracer_provider=provider)
read, write = os.pipe()
# The worst case: a fork while this process has the database open (here: inside a query's connection).
with store.connection() as connection:
    pid = os.fork()
    if pid == 0:
        os.close(read)
        with wf.execution(trigger_type="child"), wf.step("a"):
            pass
        store.flush(10)
        report = {"dropped": store.dropped_spans, "reasons": store.dropped_by_reason}
        os.write(write, json.dumps(report).encode())
        os._exit(0)
    os.close(write)
child = json.loads(os.read(read, 65536).decode())
os.waitpid(pid, 0)
with wf.execution(trigger_type="parent"), wf.step("a"):
    pass
provider.shutdown()
store.close()
print(json.dumps({"child": child, "parent_dropped": store.dropped_spans}))
"""


def test_a_child_forked_while_the_file_is_open_refuses_to_write_through_it(tmp_path: Path) -> None:
    db = tmp_path / "traces.duckdb"
    done = run_python(tmp_path, INHERITED, db)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # The child's spans were refused (counted as a failed write: the message says why), not written
    # through the parent's database instance, where they would have vanished or damaged the file.
    assert report["child"]["dropped"] == 2
    assert report["child"]["reasons"]["write_failed"] == 2
    assert "was open in the parent process when this process was forked" in done.stderr
    assert report["parent_dropped"] == 0
    check_database(db)
    assert _rows(db, "SELECT trigger_type, status FROM workflow_executions") == [("parent", "completed")]
