"""Many executions at once, across threads and asyncio tasks: every row lands in its own execution."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections import defaultdict
from datetime import datetime
from typing import Any

import pytest
from conftest import Traced
from support import epoch_us

THREADS = 8
EXECUTIONS_PER_THREAD = 40
STEPS = 5
TASKS = 200


def check_rows(traced: Traced, expected: dict[str, str], steps_per_execution: int) -> None:
    """`expected` maps execution id -> the tag that each of its step names starts with."""
    executions = {
        row[0]: row
        for row in traced.rows(
            "SELECT id, status, started_at, completed_at, duration_ms, trace_id FROM workflow_executions"
        )
    }
    assert set(executions) == set(expected)
    steps: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for row in traced.rows(
        "SELECT execution_id, step_name, sequence_num, status, started_at, completed_at, duration_ms, "
        "trace_id, parent_step_id FROM execution_steps"
    ):
        steps[row[0]].append(row)
    assert set(steps) == set(expected)

    for execution_id, tag in expected.items():
        _, status, e_start, e_end, e_duration, e_trace = executions[execution_id]
        assert status == "completed"
        assert_consistent_times(e_start, e_end, e_duration)
        rows = sorted(steps[execution_id], key=lambda r: r[2])
        assert [r[2] for r in rows] == list(range(1, steps_per_execution + 1)), execution_id
        for _, name, sequence, s_status, s_start, s_end, s_duration, s_trace, parent in rows:
            # The step name encodes the execution it was started in and its own position.
            assert name == f"{tag}-s{sequence - 1}", (execution_id, name, sequence)
            assert s_status == "completed"
            assert s_trace == e_trace
            assert parent is None
            assert_consistent_times(s_start, s_end, s_duration)
            assert e_start <= s_start <= s_end <= e_end


def assert_consistent_times(start: datetime, end: datetime, duration_ms: float) -> None:
    assert start <= end
    # Stored times are truncated to microseconds, the duration is computed from nanoseconds.
    assert abs(duration_ms - (epoch_us(end) - epoch_us(start)) / 1000) <= 0.002


def test_hundreds_of_executions_across_threads(traced: Traced) -> None:
    wf = traced.wf
    expected: dict[str, str] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            barrier.wait()
            for i in range(EXECUTIONS_PER_THREAD):
                tag = f"t{t}-e{i}"
                with wf.execution(trigger_type="thread", attributes={"test.tag": tag}) as run:
                    with lock:
                        expected[run.execution_id] = tag
                    for s in range(STEPS):
                        with wf.step(f"{tag}-s{s}"):
                            pass
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    traced.finish()

    assert len(expected) == THREADS * EXECUTIONS_PER_THREAD
    check_rows(traced, expected, STEPS)
    assert traced.processor.live_executions == 0
    assert traced.store.dropped_spans == 0
    assert traced.scalar("SELECT count(*) FROM running_spans") == 0


def test_hundreds_of_executions_across_asyncio_tasks(traced: Traced) -> None:
    wf = traced.wf
    expected: dict[str, str] = {}

    async def run_one(i: int) -> None:
        tag = f"task{i}"
        async with wf.execution(trigger_type="task") as run:
            expected[run.execution_id] = tag
            await asyncio.sleep(0)
            for s in range(STEPS):
                async with wf.step(f"{tag}-s{s}"):
                    await asyncio.sleep(0)
                await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(*(run_one(i) for i in range(TASKS)))

    asyncio.run(main())
    traced.finish()

    assert len(expected) == TASKS
    check_rows(traced, expected, STEPS)
    assert traced.processor.live_executions == 0
    assert traced.store.dropped_spans == 0


def test_parallel_steps_of_one_execution_get_distinct_sequences(traced: Traced) -> None:
    """Steps of the same execution started at once, in tasks and in threads with a copied context."""
    wf = traced.wf
    fan_out = 50

    async def step(i: int) -> None:
        async with wf.step(f"task-{i}"):
            await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(*(step(i) for i in range(fan_out)))

    def thread_step(i: int) -> None:
        with wf.step(f"thread-{i}"):
            pass

    with wf.execution() as run:
        asyncio.run(main())
        threads = [
            threading.Thread(target=contextvars.copy_context().run, args=(thread_step, i))
            for i in range(fan_out)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    traced.finish()

    rows = traced.rows(
        "SELECT step_name, sequence_num, status FROM execution_steps WHERE execution_id = ?",
        [run.execution_id],
    )
    assert len(rows) == 2 * fan_out
    assert sorted(r[1] for r in rows) == list(range(1, 2 * fan_out + 1))
    # Every task step started before any thread step.
    assert max(r[1] for r in rows if r[0].startswith("task-")) == fan_out
    assert {r[2] for r in rows} == {"completed"}
    assert traced.processor.live_executions == 0


@pytest.mark.slow
def test_many_more_executions_across_threads_and_tasks(traced: Traced) -> None:
    wf = traced.wf
    expected: dict[str, str] = {}
    lock = threading.Lock()

    async def run_one(t: int, i: int) -> None:
        tag = f"t{t}-a{i}"
        async with wf.execution() as run:
            with lock:
                expected[run.execution_id] = tag
            for s in range(STEPS):
                async with wf.step(f"{tag}-s{s}"):
                    await asyncio.sleep(0)

    def worker(t: int) -> None:
        async def main() -> None:
            await asyncio.gather(*(run_one(t, i) for i in range(250)))

        asyncio.run(main())

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    traced.finish()

    assert len(expected) == THREADS * 250
    check_rows(traced, expected, STEPS)
    assert traced.processor.live_executions == 0
    assert traced.store.dropped_spans == 0


def test_one_step_object_entered_by_concurrent_tasks(traced: Traced) -> None:
    """A step made once (`validate = wf.step("validate")`) and entered by tasks that overlap.

    Entered as a decorator it starts a fresh span per call; entered with `async with` the same
    must hold: each task ends its own span, whatever order the tasks finish in.
    """
    wf = traced.wf
    shared = wf.step("shared")
    first_in, second_in, first_done = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def first() -> None:
        # Enters first and leaves while the second task is still inside.
        try:
            async with shared:
                first_in.set()
                await second_in.wait()
        finally:
            first_done.set()

    async def second() -> None:
        await first_in.wait()
        async with shared:
            second_in.set()
            await first_done.wait()

    async def main() -> str:
        async with wf.execution() as run:
            await asyncio.gather(first(), second())
        return run.execution_id

    execution_id = asyncio.run(main())
    traced.finish()
    rows = traced.rows("SELECT status FROM execution_steps WHERE execution_id = ?", [execution_id])
    assert rows == [("completed",), ("completed",)]
