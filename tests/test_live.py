"""Live `running` rows: visible while a step runs, gone (or marked interrupted) after shutdown."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from conftest import Traced
from support import wait_until

from otel_workflow import Execution


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
