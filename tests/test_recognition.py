"""Executions and steps recognised from spans other systems emit: the Go engine's keys and CI/CD semconv."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, Status, StatusCode, Tracer, format_span_id

from otel_workflow import DuckDBSpanExporter, TraceStore
from otel_workflow.model.conventions import (
    Recognised,
    execution_id_of,
    plainly_not_workflow,
    recognise,
    role_of,
)


class Plain:
    """A plain SDK tracer exporting through DuckDBSpanExporter, with no WorkflowSpanProcessor."""

    def __init__(self, path: Path) -> None:
        self.store = TraceStore(path)
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": "engine"}), shutdown_on_exit=False
        )
        self.provider.add_span_processor(
            BatchSpanProcessor(DuckDBSpanExporter(self.store), schedule_delay_millis=50)
        )
        self.tracer: Tracer = self.provider.get_tracer("go-engine")

    def rows(self, query: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        return self.store.sql(query, params)


@pytest.fixture
def plain(db_path: Path) -> Iterator[Plain]:
    setup = Plain(db_path)
    try:
        yield setup
    finally:
        setup.provider.shutdown()
        setup.store.close()


def sid(span: Span) -> str:
    return format_span_id(span.get_span_context().span_id)


def test_go_engine_spans_become_executions_and_steps(plain: Plain) -> None:
    tracer = plain.tracer
    with tracer.start_as_current_span(
        "workflow.execute", attributes={"execution.id": "go-exec-1", "workflow.id": "billing"}
    ) as execution:
        with tracer.start_as_current_span(
            "workflow.step.validate", attributes={"execution.id": "go-exec-1", "step.sequence": 1}
        ) as validate:
            pass
        with tracer.start_as_current_span(
            "workflow.step.charge",
            attributes={"execution.id": "go-exec-1", "step.sequence": 2, "step.type": "http"},
            record_exception=False,
            set_status_on_exception=False,
        ) as charge:
            charge.set_status(Status(StatusCode.ERROR, "card declined"))
    plain.provider.shutdown()

    [(exec_id, workflow_id, status, span_id, service, error)] = plain.rows(
        "SELECT id, workflow_id, status, span_id, service_name, error_message FROM workflow_executions"
    )
    assert (exec_id, workflow_id, status, error) == ("go-exec-1", "billing", "completed", None)
    assert span_id == sid(execution)
    assert service == "engine"
    steps = plain.rows(
        "SELECT id, execution_id, step_name, step_type, sequence_num, status, error_message, parent_step_id "
        "FROM execution_steps ORDER BY sequence_num"
    )
    assert steps == [
        (sid(validate), "go-exec-1", "validate", None, 1, "completed", None, None),
        (sid(charge), "go-exec-1", "charge", "http", 2, "failed", "card declined", None),
    ]
    assert plain.store.executions()[0].id == "go-exec-1"


def test_cicd_semconv_spans_become_executions_and_steps(plain: Plain) -> None:
    tracer = plain.tracer
    run = {"cicd.pipeline.run.id": "run-42"}
    with tracer.start_as_current_span(
        "build-and-test", attributes={**run, "cicd.pipeline.name": "build", "cicd.pipeline.result": "failure"}
    ) as pipeline:
        tasks = {}
        for task_run_id, name, result in [
            ("task-1", "compile", "success"),
            ("task-2", "unit-tests", "failure"),
            ("task-3", "deploy", "skip"),
        ]:
            with tracer.start_as_current_span(
                f"RUN {name}",
                attributes={
                    **run,
                    "cicd.pipeline.task.run.id": task_run_id,
                    "cicd.pipeline.task.name": name,
                    "cicd.pipeline.task.run.result": result,
                },
            ) as task:
                tasks[name] = task
    plain.provider.shutdown()

    [(exec_id, workflow_id, status, span_id)] = plain.rows(
        "SELECT id, workflow_id, status, span_id FROM workflow_executions"
    )
    assert (exec_id, workflow_id, status, span_id) == ("run-42", "build", "failed", sid(pipeline))
    steps = {
        row[1]: row
        for row in plain.rows(
            "SELECT id, step_name, execution_id, status, parent_step_id FROM execution_steps"
        )
    }
    assert steps == {
        "compile": (sid(tasks["compile"]), "compile", "run-42", "completed", None),
        "unit-tests": (sid(tasks["unit-tests"]), "unit-tests", "run-42", "failed", None),
        "deploy": (sid(tasks["deploy"]), "deploy", "run-42", "skipped", None),
    }
    levels = dict(
        plain.rows("SELECT message, level FROM execution_logs WHERE message LIKE 'Step %: unit-tests%'")
    )
    assert levels.get("Step failed: unit-tests") == "error", levels


def test_successful_cicd_pipeline_is_completed(plain: Plain) -> None:
    with plain.tracer.start_as_current_span(
        "pipeline", attributes={"cicd.pipeline.run.id": "run-7", "cicd.pipeline.result": "success"}
    ):
        pass
    plain.provider.shutdown()
    assert plain.rows("SELECT id, status FROM workflow_executions") == [("run-7", "completed")]


def test_unrelated_spans_are_stored_but_not_recognised(plain: Plain) -> None:
    with (
        plain.tracer.start_as_current_span("GET /health"),
        plain.tracer.start_as_current_span("SELECT users"),
    ):
        pass
    plain.provider.shutdown()
    assert plain.rows("SELECT count(*) FROM spans WHERE workflow_role IS NULL") == [(2,)]
    assert plain.rows("SELECT count(*) FROM workflow_executions") == [(0,)]
    assert plain.rows("SELECT count(*) FROM execution_steps") == [(0,)]


# -- conventions.recognise ---------------------------------------------------------------------------


def test_recognise_our_own_keys() -> None:
    found = recognise(
        "workflow.execute",
        {
            "workflow.id": "orders",
            "workflow.execution.id": "e1",
            "workflow.trigger.type": "POST /orders",
            "workflow.triggered_by": "alice",
            "workflow.config_version": "v1",
            "workflow.capture_io": True,
        },
    )
    assert found == Recognised(
        role="execution",
        execution_id="e1",
        workflow_id="orders",
        trigger_type="POST /orders",
        triggered_by="alice",
        config_version="v1",
        capture_io=True,
    )
    step = recognise(
        "workflow.step.validate",
        {"workflow.step.name": "validate", "workflow.step.type": "t", "workflow.step.sequence": 3,
         "workflow.execution.id": "e1"},
    )  # fmt: skip
    assert (step.role, step.execution_id, step.step_name, step.step_type, step.step_sequence) == (
        "step", "e1", "validate", "t", 3,
    )  # fmt: skip
    assert step.declared_status is None


def test_recognise_step_name_from_span_name_and_attribute() -> None:
    assert recognise("workflow.step.load", {}).step_name == "load"
    assert recognise("workflow.step.load", {}).role == "step"
    # The attribute wins over the span name; a span named anything with a step name is a step.
    assert recognise("workflow.step.x", {"workflow.step.name": "y"}).step_name == "y"
    assert recognise("custom", {"workflow.step.name": "y"}).role == "step"


def test_recognise_go_engine_keys() -> None:
    execution = recognise("workflow.execute", {"execution.id": "g1"})
    assert (execution.role, execution.execution_id) == ("execution", "g1")
    step = recognise(
        "workflow.step.charge", {"execution.id": "g1", "step.sequence": 2, "step.name": "charge"}
    )
    assert (step.role, step.execution_id, step.step_name, step.step_sequence) == ("step", "g1", "charge", 2)
    assert recognise("workflow.step.s", {"step.sequence": "7"}).step_sequence == 7
    assert recognise("workflow.step.s", {"step.sequence": True}).step_sequence is None
    assert recognise("workflow.step.s", {"step.sequence": "seven"}).step_sequence is None
    # A non-string id is still an id.
    assert recognise("workflow.execute", {"execution.id": 12}).execution_id == "12"


@pytest.mark.parametrize(
    ("result", "status"),
    [
        ("success", "completed"),
        ("SUCCESS", "completed"),
        ("failure", "failed"),
        ("error", "failed"),
        ("timeout", "failed"),
        ("cancellation", "failed"),
        ("skip", "skipped"),
        ("something-else", None),
    ],
)
def test_recognise_cicd_results(result: str, status: str | None) -> None:
    pipeline = recognise(
        "p", {"cicd.pipeline.run.id": "r1", "cicd.pipeline.name": "build", "cicd.pipeline.result": result}
    )
    assert (pipeline.role, pipeline.execution_id, pipeline.workflow_id) == ("execution", "r1", "build")
    assert pipeline.declared_status == status
    task = recognise(
        "RUN compile",
        {
            "cicd.pipeline.run.id": "r1",
            "cicd.pipeline.task.run.id": "t1",
            "cicd.pipeline.task.name": "compile",
            "cicd.pipeline.task.type": "build",
            "cicd.pipeline.task.run.result": result,
        },
    )
    assert (task.role, task.execution_id, task.step_name, task.step_type) == (
        "step",
        "r1",
        "compile",
        "build",
    )
    assert task.declared_status == status


def test_recognise_a_cicd_task_without_name_uses_the_span_name() -> None:
    task = recognise("RUN lint", {"cicd.pipeline.run.id": "r1", "cicd.pipeline.task.run.id": "t9"})
    assert (task.role, task.step_name) == ("step", "RUN lint")


def test_recognise_declared_step_status_wins_over_cicd_result() -> None:
    found = recognise(
        "t",
        {
            "cicd.pipeline.task.name": "x",
            "cicd.pipeline.task.run.result": "success",
            "workflow.step.status": "compensated",
        },
    )
    assert found.declared_status == "compensated"


def test_recognise_key_precedence_and_empty_values() -> None:
    keys = {"workflow.execution.id": "ours", "execution.id": "go", "cicd.pipeline.run.id": "ci"}
    assert recognise("workflow.execute", keys).execution_id == "ours"
    assert recognise("workflow.execute", {**keys, "workflow.execution.id": ""}).execution_id == "go"
    assert recognise("workflow.execute", {"cicd.pipeline.run.id": "ci"}).execution_id == "ci"
    assert recognise("workflow.execute", {}).execution_id is None
    assert recognise("workflow.execute", {"workflow.capture_io": "true"}).capture_io is False


def test_recognise_other_spans() -> None:
    assert recognise("GET /items", {}) == Recognised(role=None, execution_id=None)
    # A span stamped with its execution (an HTTP call inside a step) belongs to it but is not a step.
    assert recognise("GET /items", {"workflow.execution.id": "e1"}) == Recognised(
        role=None, execution_id="e1"
    )
    assert recognise("workflow.executed", {}).role is None


_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8),
    st.lists(st.integers(), max_size=3),
)  # fmt: skip
_keys = st.sampled_from(
    [
        "workflow.execution.id", "execution.id", "cicd.pipeline.run.id", "cicd.pipeline.task.run.id",
        "cicd.pipeline.task.name", "workflow.step.name", "workflow.step.sequence", "step.sequence",
        "cicd.pipeline.result", "cicd.pipeline.task.run.result", "workflow.step.status", "workflow.id",
        "other",
    ]
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    name=st.one_of(
        st.sampled_from(["workflow.execute", "workflow.step.a", "workflow.step.", "x"]), st.text()
    ),
    attributes=st.dictionaries(_keys, _values, max_size=6),
)
def test_recognise_never_raises_and_is_consistent(name: str, attributes: dict[str, Any]) -> None:
    found = recognise(name, attributes)
    assert found.role in (None, "execution", "step")
    if found.role == "step":
        assert isinstance(found.step_name, str)
    assert found.execution_id is None or isinstance(found.execution_id, str)
    assert found.step_sequence is None or isinstance(found.step_sequence, int)
    assert recognise(name, attributes) == found


@settings(max_examples=300, deadline=None)
@given(
    name=st.one_of(
        st.sampled_from(["workflow.execute", "workflow.step.a", "workflow.step.", "workflow.x", "x"]),
        st.text(),
    ),
    attributes=st.dictionaries(_keys, _values, max_size=6),
)
def test_the_processors_fast_check_never_passes_over_a_workflow_span(
    name: str, attributes: dict[str, Any]
) -> None:
    # The processor returns early on spans `plainly_not_workflow` accepts: it must say so only for
    # spans that have neither a role nor an execution id.
    if plainly_not_workflow(name, attributes):
        assert role_of(name, attributes) is None
        assert execution_id_of(attributes) is None
    # And it does pass over the spans it is for: no workflow key, no workflow name.
    assert plainly_not_workflow("GET /orders", {"http.route": "/orders", "other": 1})
