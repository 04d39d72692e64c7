"""Two real processes: a child writes a long execution into the file while this process reads it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import otel_workflow_command, wait_until

from otel_workflow import TraceStore

CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path

    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from otel_workflow import DuckDBSpanExporter, TraceStore, WorkflowSpanProcessor, WorkflowTracer

    db, workdir = sys.argv[1], Path(sys.argv[2])
    store = TraceStore(db)
    provider = TracerProvider(resource=Resource.create({"service.name": "child"}))
    provider.add_span_processor(WorkflowSpanProcessor(store))
    provider.add_span_processor(BatchSpanProcessor(DuckDBSpanExporter(store), schedule_delay_millis=50))
    wf = WorkflowTracer("long-job", tracer_provider=provider)

    with wf.execution(trigger_type="subprocess") as run:
        with wf.step("prepare"):
            pass
        (workdir / "exec_id.tmp").write_text(run.execution_id)
        os.replace(workdir / "exec_id.tmp", workdir / "exec_id")
        with wf.step("wait_for_file"):
            deadline = time.monotonic() + 60
            while not (workdir / "release").exists():
                if time.monotonic() > deadline:
                    sys.exit(3)
                # Keep the writer busy so that its writes meet the other process's reads.
                with wf.otel_tracer.start_as_current_span("poll"):
                    time.sleep(0.01)
        with wf.step("finish"):
            pass
    provider.shutdown()
    store.close()
    print(json.dumps({"dropped": store.dropped_spans}))
    """
)


@dataclass
class Child:
    process: subprocess.Popen[str]
    db: Path
    workdir: Path
    execution_id: str

    def release_and_wait(self) -> dict[str, Any]:
        (self.workdir / "release").touch()
        out, err = self.process.communicate(timeout=60)
        assert self.process.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.fixture
def child(tmp_path: Path) -> Iterator[Child]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    db = tmp_path / "shared.duckdb"
    process = subprocess.Popen(
        [sys.executable, str(script), str(db), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        id_file = tmp_path / "exec_id"
        wait_until(
            lambda: id_file.exists() or process.poll() is not None, timeout_s=60, what="the child to start"
        )
        if not id_file.exists():
            _, err = process.communicate()
            pytest.fail(f"the child exited with {process.returncode} before starting its execution:\n{err}")
        yield Child(process, db, tmp_path, id_file.read_text())
    finally:
        (tmp_path / "release").touch()
        if process.poll() is None:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_another_process_reads_while_the_child_writes(child: Child) -> None:
    reader = TraceStore(child.db, read_only=True)

    def running() -> bool:
        rows = reader.sql(
            "SELECT status, current_step FROM workflow_executions WHERE id = ?", [child.execution_id]
        )
        return rows == [("running", "wait_for_file")]

    wait_until(running, timeout_s=30, what="the child's execution to show running on wait_for_file")

    def polls() -> int:
        return int(reader.sql("SELECT count(*) FROM spans WHERE name = 'poll'")[0][0])

    # The child keeps writing while we keep reading: neither side sees a lock error.
    first = wait_until(polls, timeout_s=30, what="the child's poll spans")
    wait_until(lambda: polls() > first, timeout_s=30, what="more poll spans")
    for _ in range(100):
        assert reader.sql("SELECT count(*) FROM spans WHERE name = 'workflow.step.prepare'") == [(1,)]
    assert dict(
        reader.sql(
            "SELECT step_name, status FROM execution_steps WHERE execution_id = ?", [child.execution_id]
        )
    ) == {"prepare": "completed", "wait_for_file": "running"}
    assert [e.status for e in reader.executions()] == ["running"]

    report = child.release_and_wait()
    assert report == {"dropped": 0}

    [(status, current_step, error)] = reader.sql(
        "SELECT status, current_step, error_message FROM workflow_executions WHERE id = ?",
        [child.execution_id],
    )
    assert (status, current_step, error) == ("completed", None, None)
    steps = reader.sql(
        "SELECT step_name, status, sequence_num FROM execution_steps "
        "WHERE execution_id = ? ORDER BY sequence_num",
        [child.execution_id],
    )
    assert steps == [
        ("prepare", "completed", 1),
        ("wait_for_file", "completed", 2),
        ("finish", "completed", 3),
    ]
    assert reader.sql("SELECT count(*) FROM running_spans") == [(0,)]
    assert reader.sql("SELECT DISTINCT service_name FROM spans") == [("child",)]
    reader.close()


def executions_json(command: list[str], db: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [*command, "executions", "--db", str(db), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "lock" not in result.stderr.lower(), result.stderr
    data = json.loads(result.stdout)
    rows = data.get("executions", data) if isinstance(data, dict) else data
    assert isinstance(rows, list), data
    return rows


def test_cli_executions_json_reads_while_the_child_writes(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    command = otel_workflow_command()
    child: Child = request.getfixturevalue("child")

    def running() -> list[dict[str, Any]]:
        rows = [r for r in executions_json(command, child.db) if r.get("id") == child.execution_id]
        return rows if rows and rows[0].get("status") == "running" and rows[0].get("current_step") else []

    [row] = wait_until(running, timeout_s=30, what="the CLI to show the child's execution running")
    assert row["current_step"] == "wait_for_file"
    assert row["workflow_id"] == "long-job"

    assert child.release_and_wait() == {"dropped": 0}
    [row] = [r for r in executions_json(command, child.db) if r.get("id") == child.execution_id]
    assert row["status"] == "completed"
    assert row["current_step"] is None
