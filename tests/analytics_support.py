"""Helpers of the analytics tests: a database filled by a real traced pipeline, plus one old trace.

`build_database(path)` runs the demo order pipeline (`otel_workflow.cli.demo.run_demo`) through a real
TracerProvider with WorkflowSpanProcessor and BatchSpanProcessor(DuckDBSpanExporter) into a DuckDB
file, one execution with I/O capture on (id `CAPTURED_ID`), one of a second workflow `billing`
(id `BILLING_ID`), and one execution ten days old (explicit span timestamps)
with an event and a link, then shuts everything down so the file is free for other processes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from conftest import make_traced
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind

from otel_workflow import WorkflowTracer, capture_io
from otel_workflow.cli.demo import run_demo

DEMO_EXECUTIONS = 4
OLD_EXECUTION_ID = "0ld00000-0000-4000-8000-000000000001"
OLD_AGE_S = 10 * 86_400
# Two ids that share the prefix "cafe": a prefix that names no single execution.
CAPTURED_ID = "cafe0001-0000-4000-8000-000000000001"
BILLING_ID = "cafe0002-0000-4000-8000-000000000002"


@dataclass(frozen=True)
class Filled:
    """What `build_database` wrote."""

    path: Path
    demo_ids: list[str]
    failed_id: str
    captured_id: str
    billing_id: str
    old_id: str
    old_trace_id: str

    @property
    def all_ids(self) -> list[str]:
        return [*self.demo_ids, self.captured_id, self.billing_id, self.old_id]


def build_database(path: Path) -> Filled:
    """Fill `path` as described in the module docstring and return the ids written."""
    traced = make_traced(path, workflow_id="order-pipeline")
    try:
        demo_ids = run_demo(traced.wf, DEMO_EXECUTIONS)
        with (
            capture_io(),
            traced.wf.execution(
                trigger_type="POST /captured",
                triggered_by="eve",
                execution_id=CAPTURED_ID,
                trigger_data={"order": 42, "api_key": "s3cret"},
            ),
            traced.wf.step("validate", step_type="step.validate") as step,
        ):
            step.record_input({"order": 42, "password": "hunter2"})
            # A span of other instrumentation inside a step: shown in the waterfall, not a step.
            with traced.provider.get_tracer("tests.http").start_as_current_span(
                "GET /customers/42", kind=SpanKind.CLIENT
            ):
                pass
            step.record_output({"valid": True})

        billing = WorkflowTracer("billing", tracer_provider=traced.provider, config_version="billing-v2")
        with (
            billing.execution(trigger_type="cron", triggered_by="bob", execution_id=BILLING_ID),
            billing.step("invoice", step_type="step.invoice"),
        ):
            time.sleep(0.002)

        # An execution that ended ten days ago, written with explicit timestamps through the same
        # provider, processor and exporter: what `prune --older-than 7d` must remove, and nothing else.
        tracer = traced.provider.get_tracer("tests.old")
        t0 = time.time_ns() - OLD_AGE_S * 1_000_000_000
        ms = 1_000_000
        root = tracer.start_span(
            "workflow.execute",
            start_time=t0,
            attributes={
                "workflow.id": "order-pipeline",
                "workflow.execution.id": OLD_EXECUTION_ID,
                "workflow.trigger.type": "cron",
            },
        )
        with trace.use_span(root, end_on_exit=False):
            old_step = tracer.start_span(
                "workflow.step.validate",
                start_time=t0 + 1 * ms,
                attributes={
                    "workflow.id": "order-pipeline",
                    "workflow.step.name": "validate",
                    "workflow.execution.id": OLD_EXECUTION_ID,
                },
                links=[Link(root.get_span_context(), {"why": "test"})],
            )
            old_step.add_event("cache miss", {"level": "warning"}, timestamp=t0 + 2 * ms)
            with trace.use_span(old_step, end_on_exit=False):
                http = tracer.start_span("GET /old", kind=SpanKind.CLIENT, start_time=t0 + 3 * ms)
                http.end(end_time=t0 + 5 * ms)
            old_step.end(end_time=t0 + 6 * ms)
        root.end(end_time=t0 + 8 * ms)
        old_trace_id = f"{root.get_span_context().trace_id:032x}"
        traced.sync()
    finally:
        traced.finish()
        traced.store.close()
    failed_id = demo_ids[min(3, DEMO_EXECUTIONS) - 1]  # run_demo fails the third execution
    return Filled(path, demo_ids, failed_id, CAPTURED_ID, BILLING_ID, OLD_EXECUTION_ID, old_trace_id)
