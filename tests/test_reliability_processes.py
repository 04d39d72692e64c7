"""Issue 6, item 5: several processes, one database file. Two application processes configured with the
same file both have everything stored, while a third process reads it the whole time: the writers take
turns on DuckDB's file lock (each holds it for one write cycle), and the reader never sees a lock error.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from reliability_support import check_database, count, start_python, stop
from support import wait_until

EXECUTIONS = 100
STEPS = 3

WRITER = """
import json, sys, time
from pathlib import Path
from otel_workflow import WorkflowTracer, configure

db, name, workdir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
EXECUTIONS, STEPS = int(sys.argv[4]), int(sys.argv[5])
telemetry = configure(db, service_name=name)
wf = WorkflowTracer("shared", tracer_provider=telemetry.tracer_provider)
(workdir / f"{name}.ready").touch()
while not (workdir / "go").exists():
    time.sleep(0.005)
for number in range(EXECUTIONS):
    with wf.execution(trigger_type=name):
        for index in range(STEPS):
            with wf.step(f"s{index}"):
                pass
    if number % 5 == 0:
        telemetry.tracer_provider.force_flush()  # more write cycles, more turns on the lock
telemetry.shutdown()
print(json.dumps({"dropped": telemetry.store.dropped_spans}))
"""

READER = """
import json, sys, time
from pathlib import Path
from otel_workflow import TraceStore

db, workdir = sys.argv[1], Path(sys.argv[2])
reads, errors, seen = 0, [], set()
reader = TraceStore(db, read_only=True)
while not (workdir / "stop").exists():
    try:
        rows = reader.sql("SELECT service_name, count(*) FROM spans GROUP BY ALL")
        reads += 1
        seen |= {name for name, _ in rows}
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
reader.close()
print(json.dumps({"reads": reads, "errors": errors, "seen": sorted(seen)}))
"""


def test_two_writers_and_a_reader_share_one_file(tmp_path: Path) -> None:
    share_one_file(tmp_path, EXECUTIONS)


@pytest.mark.slow
def test_two_writers_and_a_reader_share_one_file_for_longer(tmp_path: Path) -> None:
    share_one_file(tmp_path, 400)


def share_one_file(tmp_path: Path, executions: int) -> None:
    db = tmp_path / "shared.duckdb"
    writers = {
        name: start_python(tmp_path, WRITER, db, name, tmp_path, executions, STEPS) for name in ("a", "b")
    }
    reader = None
    try:
        for name, process in writers.items():
            wait_until(
                lambda name=name, process=process: (
                    (tmp_path / f"{name}.ready").exists()  # type: ignore[misc]
                    or process.poll() is not None
                ),
                timeout_s=60,
                what=f"writer {name} to configure",
            )
        reader = start_python(tmp_path, READER, db, tmp_path)
        time.sleep(0.2)
        (tmp_path / "go").touch()
        reports = {}
        for name, process in writers.items():
            out, err = stop(process, 120)
            assert process.returncode == 0, err
            assert "Traceback" not in err and "lock" not in err.lower(), err
            reports[name] = json.loads(out.strip().splitlines()[-1])
    finally:
        (tmp_path / "stop").touch()
        read_out, read_err = stop(reader, 60) if reader is not None else ("", "")
        for process in writers.values():
            if process.poll() is None:
                process.kill()
                stop(process)
    assert reports == {"a": {"dropped": 0}, "b": {"dropped": 0}}
    read = json.loads(read_out.strip().splitlines()[-1])
    assert read["errors"] == [], read_err
    assert read["reads"] > 0
    assert set(read["seen"]) <= {"a", "b"}

    check_database(db)
    completed = "WHERE service_name = ? AND status = 'completed'"
    for name in ("a", "b"):
        assert count(db, f"SELECT count(*) FROM workflow_executions {completed}", [name]) == executions
        assert count(db, f"SELECT count(*) FROM execution_steps {completed}", [name]) == executions * STEPS
    assert count(db, "SELECT count(*) FROM spans") == 2 * executions * (STEPS + 1)
    assert count(db, "SELECT count(*) FROM running_spans") == 0
