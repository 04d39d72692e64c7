"""WorkflowTracer: executions and steps as spans, and the rows they become."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import json
import logging
import os
import random
import re
import subprocess
import sys
import threading
import uuid
import weakref
from pathlib import Path
from typing import Any

import pytest
from conftest import CONFIG_VERSION, SERVICE_NAME, WORKFLOW_ID, Traced
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import Span, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, format_span_id, format_trace_id

from otel_workflow import (
    Execution,
    Step,
    StoreError,
    TraceStore,
    WorkflowSpanProcessor,
    WorkflowTracer,
    capture_io,
)
from otel_workflow.instrument import numbering
from otel_workflow.instrument.tracer import new_execution_id
from otel_workflow.sdk import processor


@pytest.fixture(autouse=True, params=["c-hooks", "python-hooks"])
def hooks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs with the processor's C hooks and again with the Python ones (the reference)."""
    if request.param == "python-hooks":
        monkeypatch.setattr(processor, "_spanstart", None)
    elif processor._spanstart is None:
        if os.environ.get("OTEL_WORKFLOW_REQUIRE_NATIVE"):
            pytest.fail("the C hooks (otel_workflow._native.spanstart) were not built")
        pytest.skip("the C hooks (otel_workflow._native.spanstart) were not built")
    return str(request.param)


EXEC_COLUMNS = (
    "id, workflow_id, trigger_type, status, triggered_by, started_at, completed_at, duration_ms, "
    "error_message, metadata, trace_id, span_id, service_name, current_step"
)


def execution_rows(traced: Traced) -> list[dict[str, Any]]:
    names = [c.strip() for c in EXEC_COLUMNS.split(",")]
    rows = traced.rows(f"SELECT {EXEC_COLUMNS} FROM workflow_executions ORDER BY started_at")
    return [dict(zip(names, row, strict=True)) for row in rows]


def step_rows(traced: Traced, execution_id: str | None = None) -> list[dict[str, Any]]:
    names = [
        "id", "execution_id", "step_name", "step_type", "status", "sequence_num", "parent_step_id",
        "started_at", "completed_at", "duration_ms", "error_message",
    ]  # fmt: skip
    where = "" if execution_id is None else "WHERE execution_id = ?"
    rows = traced.rows(
        f"SELECT {', '.join(names)} FROM execution_steps {where} ORDER BY sequence_num, started_at",
        None if execution_id is None else [execution_id],
    )
    return [dict(zip(names, row, strict=True)) for row in rows]


def steps_by_name(traced: Traced, execution_id: str) -> dict[str, dict[str, Any]]:
    return {s["step_name"]: s for s in step_rows(traced, execution_id)}


def test_execution_with_steps_becomes_rows(traced: Traced) -> None:
    wf = traced.wf
    with wf.execution(trigger_type="POST /orders", triggered_by="alice@example.com") as run:
        with wf.step("validate", step_type="step.validate"):
            pass
        with wf.step("charge"):
            pass
    traced.finish()

    assert isinstance(run, Execution)
    [execution] = execution_rows(traced)
    context = run.span.get_span_context()
    assert execution["id"] == run.execution_id
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", run.execution_id)
    assert execution["workflow_id"] == WORKFLOW_ID
    assert execution["trigger_type"] == "POST /orders"
    assert execution["triggered_by"] == "alice@example.com"
    assert execution["status"] == "completed"
    assert execution["error_message"] is None
    assert execution["trace_id"] == format_trace_id(context.trace_id)
    assert execution["span_id"] == format_span_id(context.span_id)
    assert execution["service_name"] == SERVICE_NAME
    assert execution["current_step"] is None
    assert execution["started_at"] <= execution["completed_at"]
    assert execution["duration_ms"] >= 0
    metadata = json.loads(execution["metadata"])
    assert metadata["config_version"] == CONFIG_VERSION
    assert metadata["capture_io"] is False

    steps = step_rows(traced, run.execution_id)
    assert [(s["step_name"], s["sequence_num"], s["status"]) for s in steps] == [
        ("validate", 1, "completed"),
        ("charge", 2, "completed"),
    ]
    assert steps[0]["step_type"] == "step.validate"
    assert steps[1]["step_type"] is None
    for step in steps:
        assert step["parent_step_id"] is None
        assert step["error_message"] is None
        assert (
            execution["started_at"] <= step["started_at"] <= step["completed_at"] <= execution["completed_at"]
        )
    assert traced.store.dropped_spans == 0


def test_store_methods_return_the_same_rows(traced: Traced) -> None:
    wf = traced.wf
    with wf.execution(trigger_type="cron") as run, wf.step("validate") as handle:
        pass
    traced.finish()

    [execution] = traced.store.executions()
    assert execution.id == run.execution_id
    assert execution.status == "completed"
    assert execution.workflow_id == WORKFLOW_ID
    assert traced.store.executions(status="failed") == []
    assert traced.store.executions(workflow_id="other") == []
    [step] = traced.store.steps(run.execution_id)
    assert step.step_name == "validate"
    assert step.sequence_num == 1
    assert step.execution_id == run.execution_id
    assert step.id == format_span_id(handle.span.get_span_context().span_id)


def test_async_context_managers(traced: Traced) -> None:
    wf = traced.wf

    async def main() -> str:
        async with wf.execution(trigger_type="queue") as run:
            async with wf.step("fetch") as step:
                assert WorkflowTracer.current_step() is step
                await asyncio.sleep(0)
            async with wf.step("store"):
                await asyncio.sleep(0)
            return run.execution_id

    execution_id = asyncio.run(main())
    traced.finish()

    [execution] = execution_rows(traced)
    assert execution["id"] == execution_id
    assert execution["status"] == "completed"
    assert execution["trigger_type"] == "queue"
    assert [(s["step_name"], s["sequence_num"], s["status"]) for s in step_rows(traced)] == [
        ("fetch", 1, "completed"),
        ("store", 2, "completed"),
    ]


def test_sync_decorators_make_a_new_execution_and_step_per_call(traced: Traced) -> None:
    wf = traced.wf
    seen: list[str] = []

    @wf.step("double", step_type="math")
    def double(x: int) -> int:
        step = WorkflowTracer.current_step()
        assert step is not None and step.name == "double"
        return 2 * x

    @wf.execution(trigger_type="cron")
    def job(x: int) -> int:
        run = WorkflowTracer.current_execution()
        assert run is not None
        seen.append(run.execution_id)
        return double(x) + double(x + 1)

    assert job.__name__ == "job"
    assert double.__name__ == "double"
    assert [job(1), job(2), job(3)] == [6, 10, 14]
    traced.finish()

    assert len(set(seen)) == 3
    executions = execution_rows(traced)
    assert sorted(e["id"] for e in executions) == sorted(seen)
    assert all(e["status"] == "completed" and e["trigger_type"] == "cron" for e in executions)
    for execution_id in seen:
        steps = step_rows(traced, execution_id)
        assert [(s["step_name"], s["sequence_num"], s["step_type"]) for s in steps] == [
            ("double", 1, "math"),
            ("double", 2, "math"),
        ]
        assert steps[0]["id"] != steps[1]["id"]
    assert traced.scalar("SELECT count(DISTINCT span_id) FROM spans") == 9


def test_async_decorators_make_a_new_execution_and_step_per_call(traced: Traced) -> None:
    wf = traced.wf

    @wf.step("fetch")
    async def fetch(n: int) -> int:
        await asyncio.sleep(0)
        return n + 1

    @wf.execution(trigger_type="async")
    async def job(n: int) -> tuple[str, int]:
        run = WorkflowTracer.current_execution()
        assert run is not None
        return run.execution_id, await fetch(n)

    async def main() -> list[tuple[str, int]]:
        return [await job(1), await job(2)]

    assert asyncio.iscoroutinefunction(job)
    results = asyncio.run(main())
    traced.finish()

    assert [value for _, value in results] == [2, 3]
    ids = [execution_id for execution_id, _ in results]
    assert len(set(ids)) == 2
    assert sorted(e["id"] for e in execution_rows(traced)) == sorted(ids)
    for execution_id in ids:
        assert [(s["step_name"], s["sequence_num"]) for s in step_rows(traced, execution_id)] == [
            ("fetch", 1)
        ]


def test_nested_steps_carry_parent_step_id(traced: Traced) -> None:
    wf = traced.wf
    with wf.execution() as run:
        with wf.step("pipeline") as outer:
            with wf.step("extract") as inner_a, wf.step("download") as innermost:
                pass
            with wf.step("load") as inner_b:
                pass
        with wf.step("notify"):
            pass
    traced.finish()

    def sid(handle: Step) -> str:
        return format_span_id(handle.span.get_span_context().span_id)

    steps = steps_by_name(traced, run.execution_id)
    assert {name: s["sequence_num"] for name, s in steps.items()} == {
        "pipeline": 1,
        "extract": 2,
        "download": 3,
        "load": 4,
        "notify": 5,
    }
    assert steps["pipeline"]["id"] == sid(outer)
    assert steps["pipeline"]["parent_step_id"] is None
    assert steps["extract"]["parent_step_id"] == sid(outer)
    assert steps["download"]["parent_step_id"] == sid(inner_a)
    assert steps["download"]["id"] == sid(innermost)
    assert steps["load"]["parent_step_id"] == sid(outer)
    assert steps["load"]["id"] == sid(inner_b)
    assert steps["notify"]["parent_step_id"] is None


def test_same_step_name_twice_gives_two_rows(traced: Traced) -> None:
    wf = traced.wf
    with wf.execution() as run:
        for _ in range(3):
            with wf.step("retry"):
                pass
    traced.finish()

    steps = step_rows(traced, run.execution_id)
    assert [(s["step_name"], s["sequence_num"], s["status"]) for s in steps] == [
        ("retry", 1, "completed"),
        ("retry", 2, "completed"),
        ("retry", 3, "completed"),
    ]
    assert len({s["id"] for s in steps}) == 3


def test_exception_fails_step_and_execution_and_is_reraised(traced: Traced) -> None:
    wf = traced.wf
    with pytest.raises(ValueError, match=r"^boom$"), wf.execution() as run:
        with wf.step("validate"):
            pass
        with wf.step("charge") as failing:
            raise ValueError("boom")
    traced.finish()

    assert WorkflowTracer.current_execution() is None
    assert WorkflowTracer.current_step() is None
    [execution] = execution_rows(traced)
    assert execution["status"] == "failed"
    assert execution["error_message"] == "ValueError: boom"
    steps = {s["step_name"]: s for s in step_rows(traced, run.execution_id)}
    assert steps["validate"]["status"] == "completed"
    assert steps["charge"]["status"] == "failed"
    assert steps["charge"]["error_message"] == "ValueError: boom"

    step_span_id = format_span_id(failing.span.get_span_context().span_id)
    [(status_code, status_message)] = traced.rows(
        "SELECT status_code, status_message FROM spans WHERE span_id = ?", [step_span_id]
    )
    assert (status_code, status_message) == ("ERROR", "ValueError: boom")
    events = traced.rows("SELECT name, attributes FROM span_events WHERE span_id = ?", [step_span_id])
    assert [name for name, _ in events] == ["exception"]
    attributes = json.loads(events[0][1])
    assert attributes["exception.type"] == "ValueError"
    assert attributes["exception.message"] == "boom"
    assert "Traceback" in attributes["exception.stacktrace"]


def test_exception_in_async_step_and_decorator_is_reraised(traced: Traced) -> None:
    wf = traced.wf

    @wf.step("explode")
    async def explode() -> None:
        await asyncio.sleep(0)
        raise KeyError("missing")

    @wf.execution()
    async def job() -> None:
        await explode()

    with pytest.raises(KeyError):
        asyncio.run(job())
    traced.finish()

    [execution] = execution_rows(traced)
    assert execution["status"] == "failed"
    assert execution["error_message"] == "KeyError: 'missing'"
    [step] = step_rows(traced)
    assert step["status"] == "failed"
    assert step["error_message"] == "KeyError: 'missing'"


def test_exception_without_message_keeps_the_type(traced: Traced) -> None:
    wf = traced.wf

    @wf.execution()
    def job() -> None:
        with wf.step("s"):
            raise RuntimeError

    with pytest.raises(RuntimeError):
        job()
    traced.finish()

    [step] = step_rows(traced)
    assert step["status"] == "failed"
    assert step["error_message"] == "RuntimeError"


def test_skip_ends_the_step_skipped(traced: Traced) -> None:
    wf = traced.wf
    with wf.execution() as run:
        with wf.step("optional") as step:
            step.skip("feature flag off")
        with wf.step("silent") as step2:
            step2.skip()
    traced.finish()

    steps = {s["step_name"]: s for s in step_rows(traced, run.execution_id)}
    assert steps["optional"]["status"] == "skipped"
    assert steps["silent"]["status"] == "skipped"
    assert steps["optional"]["completed_at"] is not None
    [execution] = execution_rows(traced)
    assert execution["status"] == "completed"
    [attributes] = traced.rows("SELECT attributes FROM spans WHERE name = 'workflow.step.optional'")
    assert json.loads(attributes[0])["workflow.step.skip_reason"] == "feature flag off"
    messages = [
        m for (m,) in traced.rows("SELECT message FROM execution_logs WHERE module_name = 'optional'")
    ]
    assert "Step skipped: optional" in messages


def test_mark_compensated_ends_the_step_compensated(traced: Traced) -> None:
    wf = traced.wf
    with wf.execution() as run:
        with wf.step("reserve") as step:
            step.mark_compensated()
        with wf.step("ship"):
            pass
    traced.finish()

    steps = {s["step_name"]: s for s in step_rows(traced, run.execution_id)}
    assert steps["reserve"]["status"] == "compensated"
    assert steps["reserve"]["completed_at"] is not None
    assert steps["ship"]["status"] == "completed"
    assert traced.scalar("SELECT count(*) FROM execution_steps WHERE status = 'running'") == 0


def test_raw_spans_have_the_design_names_and_attributes(traced: Traced) -> None:
    wf = traced.wf
    with (
        wf.execution(trigger_type="POST /orders", triggered_by="bob") as run,
        wf.step("validate", step_type="step.validate") as step,
    ):
        pass
    traced.finish()

    exec_ctx = run.span.get_span_context()
    step_ctx = step.span.get_span_context()
    rows = traced.rows(
        "SELECT name, trace_id, span_id, parent_span_id, kind, status_code, service_name, scope_name, "
        "attributes FROM spans ORDER BY start_time"
    )
    assert [r[0] for r in rows] == ["workflow.execute", "workflow.step.validate"]
    (_, e_trace, e_span, e_parent, e_kind, e_status, e_service, e_scope, e_attrs) = rows[0]
    (_, s_trace, s_span, s_parent, _, s_status, _, _, s_attrs) = rows[1]
    assert e_trace == s_trace == format_trace_id(exec_ctx.trace_id)
    assert re.fullmatch("[0-9a-f]{32}", e_trace)
    assert e_span == format_span_id(exec_ctx.span_id)
    assert s_span == format_span_id(step_ctx.span_id)
    assert re.fullmatch("[0-9a-f]{16}", s_span)
    assert e_parent is None
    assert s_parent == e_span
    assert e_kind == "INTERNAL"
    assert e_status == s_status == "OK"
    assert e_service == SERVICE_NAME
    assert e_scope == "otel_workflow"

    execution_attributes = json.loads(e_attrs)
    assert execution_attributes["workflow.id"] == WORKFLOW_ID
    assert execution_attributes["workflow.execution.id"] == run.execution_id
    assert execution_attributes["workflow.trigger.type"] == "POST /orders"
    assert execution_attributes["workflow.triggered_by"] == "bob"
    assert execution_attributes["workflow.config_version"] == CONFIG_VERSION
    assert "workflow.capture_io" not in execution_attributes

    step_attributes = json.loads(s_attrs)
    assert step_attributes["workflow.step.name"] == "validate"
    assert step_attributes["workflow.step.type"] == "step.validate"
    assert step_attributes["workflow.step.sequence"] == 1
    assert step_attributes["workflow.execution.id"] == run.execution_id

    # The SDK span objects carry the same attributes.
    assert (
        run.span.attributes is not None and run.span.attributes["workflow.execution.id"] == run.execution_id
    )  # type: ignore[attr-defined]


def test_capture_io_sets_the_execution_attribute(traced: Traced) -> None:
    wf = traced.wf
    with capture_io(), wf.execution() as run:
        pass
    traced.finish()

    [attributes] = traced.rows("SELECT attributes FROM spans WHERE name = 'workflow.execute'")
    assert json.loads(attributes[0])["workflow.capture_io"] is True
    [execution] = execution_rows(traced)
    assert execution["id"] == run.execution_id
    assert json.loads(execution["metadata"])["capture_io"] is True


def test_other_spans_inside_an_execution_are_stored_but_are_not_steps(traced: Traced) -> None:
    wf = traced.wf
    with (
        wf.execution() as run,
        wf.step("call-api"),
        wf.otel_tracer.start_as_current_span("GET https://api.example.com/items"),
    ):
        pass
    traced.finish()

    [step] = step_rows(traced, run.execution_id)
    assert step["step_name"] == "call-api"
    [(execution_id, role)] = traced.rows(
        "SELECT execution_id, workflow_role FROM spans WHERE name LIKE 'GET %'"
    )
    assert execution_id == run.execution_id
    assert role is None
    assert traced.scalar("SELECT count(*) FROM spans") == 3


def test_current_execution_and_current_step(traced: Traced) -> None:
    wf = traced.wf
    assert WorkflowTracer.current_execution() is None
    assert WorkflowTracer.current_step() is None
    other_thread: list[object] = []

    with wf.execution() as run:
        assert WorkflowTracer.current_execution() is run
        assert WorkflowTracer.current_step() is None
        with wf.step("outer") as outer:
            assert WorkflowTracer.current_step() is outer
            assert outer.execution is run
            with wf.step("inner") as inner:
                assert WorkflowTracer.current_step() is inner
                assert WorkflowTracer.current_execution() is run
            assert WorkflowTracer.current_step() is outer
            # A thread started without a copied context sees no execution.
            thread = threading.Thread(
                target=lambda: other_thread.extend(
                    [WorkflowTracer.current_execution(), WorkflowTracer.current_step()]
                )
            )
            thread.start()
            thread.join()
        assert WorkflowTracer.current_step() is None
        assert WorkflowTracer.current_execution() is run

        async def in_task() -> tuple[object, object]:
            return WorkflowTracer.current_execution(), WorkflowTracer.current_step()

        async def main() -> tuple[object, object]:
            return await asyncio.create_task(in_task())

        # asyncio.run copies the current context into the task.
        assert asyncio.run(main()) == (run, None)
    assert other_thread == [None, None]
    assert WorkflowTracer.current_execution() is None
    assert WorkflowTracer.current_step() is None


def test_explicit_execution_id_is_used(traced: Traced) -> None:
    wf = traced.wf
    with wf.execution(execution_id="order-42-run-1") as run, wf.step("validate"):
        pass
    traced.finish()

    assert run.execution_id == "order-42-run-1"
    [execution] = execution_rows(traced)
    assert execution["id"] == "order-42-run-1"
    [step] = step_rows(traced, "order-42-run-1")
    assert step["step_name"] == "validate"


def test_a_caught_step_failure_leaves_the_execution_completed(traced: Traced) -> None:
    wf = traced.wf
    with wf.execution() as run:
        try:
            with wf.step("flaky"):
                raise ConnectionError("reset by peer")
        except ConnectionError:
            pass
        with wf.step("fallback"):
            pass
    traced.finish()

    [execution] = execution_rows(traced)
    assert (execution["status"], execution["error_message"]) == ("completed", None)
    steps = {s["step_name"]: (s["status"], s["error_message"]) for s in step_rows(traced, run.execution_id)}
    assert steps == {"flaky": ("failed", "ConnectionError: reset by peer"), "fallback": ("completed", None)}
    assert traced.processor.live_executions == 0


def test_execution_accepts_trigger_data(traced: Traced) -> None:
    """DESIGN.md: `wf.execution(...)` takes `trigger_type=None, triggered_by=None, trigger_data=None`."""
    wf = traced.wf
    with wf.execution(
        trigger_type="POST /orders", triggered_by="alice", trigger_data={"order_id": 42}
    ) as run:
        pass
    traced.finish()
    [execution] = execution_rows(traced)
    assert (execution["id"], execution["status"]) == (run.execution_id, "completed")


def test_step_handle_has_the_design_methods(traced: Traced) -> None:
    """DESIGN.md: the step handle has `.span`, `record_input`, `record_output`, `skip`, `mark_compensated`."""
    with traced.wf.execution(), traced.wf.step("s") as step:
        for name in ("span", "record_input", "record_output", "skip", "mark_compensated"):
            assert hasattr(step, name), name


def test_execution_ids_are_uuid4_and_ignore_the_applications_random_seed() -> None:
    random.seed(7)
    first = new_execution_id()
    random.seed(7)
    second = new_execution_id()
    assert first != second
    assert {uuid.UUID(first).version, uuid.UUID(second).version} == {4}


_FORKED_IDS = """
import os
from otel_workflow.instrument.tracer import new_execution_id

new_execution_id()
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(write, new_execution_id().encode())
    os._exit(0)
os.waitpid(pid, 0)
print(os.read(read, 100).decode(), new_execution_id())
"""


def test_a_forked_child_draws_other_execution_ids_than_its_parent() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _FORKED_IDS], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    child, parent = done.stdout.split()
    assert child != parent


def test_steps_started_by_other_code_share_the_executions_numbering(traced: Traced) -> None:
    # A raw OpenTelemetry step span inside a WorkflowTracer execution is numbered by the processor from
    # the counter the tracer numbers its own steps with: one sequence, no number twice.
    wf = traced.wf
    with wf.execution() as run:
        with wf.step("first"):
            pass
        raw = {"workflow.step.name": "raw"}
        with wf.otel_tracer.start_as_current_span("workflow.step.raw", attributes=raw), wf.step("inside-raw"):
            pass
        with wf.step("last"):
            pass
    traced.finish()

    steps = steps_by_name(traced, run.execution_id)
    numbers = [(s["step_name"], s["sequence_num"]) for s in step_rows(traced, run.execution_id)]
    assert numbers == [("first", 1), ("raw", 2), ("inside-raw", 3), ("last", 4)]
    assert steps["inside-raw"]["parent_step_id"] == steps["raw"]["id"]
    assert traced.processor.live_executions == 0


def test_a_step_started_under_a_step_that_already_ended_still_names_it(traced: Traced) -> None:
    # The processor finds running parents by span id; a parent that has ended is recognised from the
    # context instead (a child started after its parent returned, as a fire-and-forget task does).
    wf = traced.wf
    with wf.execution() as run:
        with wf.step("parent") as parent:
            parent_context = otel_trace.set_span_in_context(parent.span)
        with wf.otel_tracer.start_as_current_span(
            "workflow.step.late", context=parent_context, attributes={"workflow.step.name": "late"}
        ):
            pass
        with wf.otel_tracer.start_as_current_span("GET /later", context=parent_context):
            pass
    traced.finish()

    steps = steps_by_name(traced, run.execution_id)
    assert steps["late"]["parent_step_id"] == steps["parent"]["id"]
    assert steps["late"]["sequence_num"] == 2
    assert traced.scalar("SELECT execution_id FROM spans WHERE name = 'GET /later'") == run.execution_id


def test_a_step_whose_execution_id_came_after_it_started_passes_it_on(traced: Traced) -> None:
    tracer = traced.wf.otel_tracer
    with tracer.start_as_current_span("workflow.step.outer", attributes={"workflow.step.name": "o"}) as outer:
        outer.set_attribute("workflow.execution.id", "late-id")
        with tracer.start_as_current_span("workflow.step.inner", attributes={"workflow.step.name": "i"}):
            pass
    traced.finish()

    steps = steps_by_name(traced, "late-id")
    assert steps["i"]["parent_step_id"] == steps["o"]["id"]


def test_steps_are_numbered_without_the_processor() -> None:
    # An OTLP-only service (no WorkflowSpanProcessor) still sends numbered steps: the tracer numbers them.
    memory = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    wf = WorkflowTracer("orders", tracer_provider=provider)
    counters_before = numbering.live_count()
    with wf.execution():
        for name in ("a", "b", "c"):
            with wf.step(name):
                pass
    provider.shutdown()
    numbers = {
        span.attributes["workflow.step.name"]: span.attributes["workflow.step.sequence"]
        for span in memory.get_finished_spans()
        if span.attributes is not None and "workflow.step.name" in span.attributes
    }
    assert numbers == {"a": 1, "b": 2, "c": 3}
    assert numbering.live_count() == counters_before


def test_state_for_executions_that_never_end_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(numbering, "LIMIT", numbering.live_count() + 5)
    processor = WorkflowSpanProcessor(max_live_executions=3)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    wf = WorkflowTracer("orders", tracer_provider=provider)
    counters_before = numbering.live_count()
    scopes = []
    for _ in range(10):
        scope = wf.execution()
        scope.__enter__()  # left open: the span has not ended
        scopes.append(scope)
        with wf.step("s"):
            pass
    assert processor.live_executions <= 3
    assert processor.evicted_executions >= 7
    # Step spans of executions started elsewhere: counters made by the processor, never ended here.
    tracer = provider.get_tracer("other")
    for number in range(20):
        with tracer.start_as_current_span("workflow.step.x", attributes={"execution.id": f"go-{number}"}):
            pass
    assert numbering.live_count() <= numbering.LIMIT
    for scope in reversed(scopes):
        scope.__exit__(None, None, None)
    assert processor.live_executions == 0
    assert numbering.live_count() <= counters_before + 5
    provider.shutdown()


def test_the_processor_uses_the_hooks_asked_for(hooks: str) -> None:
    assert WorkflowSpanProcessor().native == (hooks == "c-hooks")


def test_a_span_class_the_c_hooks_do_not_read_is_still_processed() -> None:
    class OwnSpan(Span):  # another class, fields the hooks cannot assume: the Python hooks take it
        pass

    enriching = WorkflowSpanProcessor()
    provider = TracerProvider(shutdown_on_exit=False)
    tracer = provider.get_tracer("t")
    execution = tracer.start_span("workflow.execute", attributes={"workflow.execution.id": "e1"})
    enriching.on_start(execution, parent_context=None)
    step = OwnSpan(
        "workflow.step.own",
        context=SpanContext(execution.context.trace_id, 77, is_remote=False),
        parent=execution.context,
        attributes={"workflow.step.name": "own"},
    )
    step.start()
    enriching.on_start(step, parent_context=otel_trace.set_span_in_context(execution))
    assert step.attributes["workflow.execution.id"] == "e1"
    assert step.attributes["workflow.step.sequence"] == 1
    enriching.on_end(step)
    execution.end()
    enriching.on_end(execution)
    assert enriching.live_executions == 0


def test_a_failing_processor_never_reaches_the_application_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    enriching = WorkflowSpanProcessor()
    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("t")
    span = tracer.start_span("GET /odd", context=otel_trace.set_span_in_context(tracer.start_span("parent")))
    span._parent = "not a SpanContext"  # type: ignore[attr-defined]  # what no processor can read
    with caplog.at_level(logging.ERROR, logger="otel_workflow"):
        for _ in range(3):
            enriching.on_start(span, parent_context=None)
    failures = [r for r in caplog.records if "processor failed on span start" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None


def test_a_processor_refuses_a_read_only_store_at_once(db_path: Path) -> None:
    TraceStore(db_path).close()
    read_only = TraceStore(db_path, read_only=True)
    with pytest.raises(StoreError, match="read-only"):
        WorkflowSpanProcessor(read_only)
    read_only.close()


def test_closed_scopes_leave_nothing_in_the_context(traced: Traced) -> None:
    # A context keeps every variable set in it: scopes that left theirs behind made a long-running
    # service's memory (and every context switch) grow with the number of runs.
    wf = traced.wf

    def runs(count: int) -> None:
        for _ in range(count):
            with wf.execution(), wf.step("a"), wf.step("b"):
                pass

    runs(3)
    held = len(contextvars.copy_context())
    runs(50)
    assert len(contextvars.copy_context()) == held


def test_spans_waiting_for_their_live_rows_are_not_kept_alive(tmp_path: Path) -> None:
    # The gate holds weak references: a span that ends before the writer looks needs no live row, and
    # kept alive until then it would make every garbage collection of the application walk it.
    with TraceStore(tmp_path / "live.duckdb", flush_interval_s=60.0) as store:
        provider = TracerProvider(shutdown_on_exit=False)
        provider.add_span_processor(WorkflowSpanProcessor(store))
        wf = WorkflowTracer(WORKFLOW_ID, tracer_provider=provider)
        with wf.execution() as run, wf.step("quick") as step:
            alive = [weakref.ref(run.span), weakref.ref(step.span)]
        assert len(store.live_rows.spans) == 2  # still waiting: the writer lingers up to a minute
        del run, step
        gc.collect()
        assert [ref() for ref in alive] == [None, None]
        with wf.execution() as running:
            assert store.flush(timeout_s=30)
            [(span_id, status)] = store.sql("SELECT span_id, status FROM workflow_executions")
            assert (span_id, status) == (format_span_id(running.span.get_span_context().span_id), "running")
        provider.shutdown()
