"""Live `running` rows: visible while a step runs, gone (or marked interrupted) after shutdown."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Traced
from support import wait_until

from otel_workflow import Execution, TraceStore, WorkflowTracer, configure


def nothing_running(traced: Traced) -> None:
    assert traced.rows("SELECT id FROM workflow_executions WHERE status = 'running'") == []
    assert traced.rows("SELECT id FROM execution_steps WHERE status = 'running'") == []
    assert traced.scalar("SELECT count(*) FROM running_spans WHERE interrupted_at IS NULL") == 0


def test_a_blocked_step_is_visible_while_it_runs(traced: Traced) -> None:
    wf = traced.wf
    release = threading.Event()
    started: list[Execution] = []
    errors: list[BaseException] = []

    def pipeline() -> None:
        try:
            with wf.execution(trigger_type="POST /orders") as run:
                started.append(run)
                with wf.step("prepare"):
                    pass
                with wf.step("await-approval"):
                    if not release.wait(30):
                        raise TimeoutError("the test never released the step")
                with wf.step("ship"):
                    pass
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=pipeline)
    worker.start()
    try:

        def live_state() -> list[tuple[Any, ...]]:
            rows = traced.rows("SELECT status, current_step FROM workflow_executions")
            return rows if rows == [("running", "await-approval")] else []

        wait_until(live_state, what="the execution to show as running on await-approval")
        [run] = started

        def steps_state() -> dict[str, str] | None:
            rows = dict(
                traced.rows(
                    "SELECT step_name, status FROM execution_steps WHERE execution_id = ?", [run.execution_id]
                )
            )
            # `prepare` ended: it shows completed once the batch processor has exported it.
            return rows if rows == {"prepare": "completed", "await-approval": "running"} else None

        wait_until(steps_state, what="prepare completed and await-approval running")
        [(sequence, completed_at)] = traced.rows(
            "SELECT sequence_num, completed_at FROM execution_steps WHERE step_name = 'await-approval'"
        )
        assert (sequence, completed_at) == (2, None)
        [(status, completed_at, error)] = traced.rows(
            "SELECT status, completed_at, error_message FROM workflow_executions"
        )
        assert (status, completed_at, error) == ("running", None, None)
        assert [e.status for e in traced.store.executions(status="running")] == ["running"]
        assert traced.store.executions(status="running")[0].current_step == "await-approval"
    finally:
        release.set()
        worker.join(30)
    assert errors == []
    traced.finish()

    nothing_running(traced)
    assert traced.scalar("SELECT count(*) FROM running_spans") == 0
    assert traced.rows("SELECT status, current_step FROM workflow_executions") == [("completed", None)]
    assert dict(traced.rows("SELECT step_name, status FROM execution_steps")) == {
        "prepare": "completed",
        "await-approval": "completed",
        "ship": "completed",
    }


def test_running_rows_end_up_completed_without_shutdown(traced: Traced) -> None:
    """After a plain flush (provider still up) a finished execution has no `running` row left behind."""
    wf = traced.wf
    for _ in range(5):
        with wf.execution(), wf.step("a"), wf.step("b"):
            pass
    traced.sync()
    nothing_running(traced)
    assert traced.scalar("SELECT count(*) FROM running_spans") == 0
    assert traced.scalar("SELECT count(*) FROM workflow_executions WHERE status = 'completed'") == 5


@pytest.mark.parametrize("closer", ["provider.shutdown", "store.close"])
def test_an_execution_left_open_at_shutdown_is_marked_interrupted(traced: Traced, closer: str) -> None:
    wf = traced.wf
    with wf.execution() as run:
        with wf.step("done-before-shutdown"):
            pass
        with wf.step("never-finished"):
            if closer == "provider.shutdown":
                traced.provider.shutdown()
            else:
                traced.sync()
                traced.store.close()
    # The spans ended after shutdown: they cannot be stored any more, and must not show as running.
    traced.finish()

    [(status, error, completed_at)] = traced.rows(
        "SELECT status, error_message, completed_at FROM workflow_executions WHERE id = ?", [run.execution_id]
    )
    assert status == "failed"
    assert "interrupted" in error
    assert completed_at is None
    steps = {
        name: (status, error)
        for name, status, error in traced.rows("SELECT step_name, status, error_message FROM execution_steps")
    }
    assert steps["done-before-shutdown"] == ("completed", None)
    assert steps["never-finished"][0] == "failed"
    assert "interrupted" in steps["never-finished"][1]
    nothing_running(traced)
    assert traced.scalar("SELECT count(*) FROM running_spans WHERE interrupted_at IS NOT NULL") == 2
    logs = [m for (m,) in traced.rows("SELECT message FROM execution_logs WHERE level = 'error'")]
    assert any(m.startswith("Step failed: never-finished: interrupted") for m in logs), logs


def test_spans_after_an_idle_spell_are_written_without_a_flush(tmp_path: Path) -> None:
    # The writer sleeps while its queue is empty; the first span after that must wake it, or a quiet
    # service's runs would only show up at the next flush or shutdown.
    db = tmp_path / "live.duckdb"
    telemetry = configure(db, service_name="quiet")
    wf = WorkflowTracer("quiet", tracer_provider=telemetry.tracer_provider)
    reader = TraceStore(db, read_only=True)

    def stored(query: str) -> int:
        return int(reader.sql(query)[0][0])

    with wf.execution(), wf.step("first"):
        pass
    wait_until(lambda: stored("SELECT count(*) FROM spans") == 2, timeout_s=20)
    time.sleep(1.5)  # idle: the writer has written everything and waits
    with wf.execution() as run:
        wait_until(
            lambda: stored(f"SELECT count(*) FROM running_spans WHERE execution_id = '{run.execution_id}'"),
            timeout_s=20,
            what="the live row of an execution started after an idle spell",
        )
    wait_until(lambda: stored("SELECT count(*) FROM spans") == 3, timeout_s=20)
    telemetry.shutdown()
