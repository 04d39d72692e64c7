"""`WorkflowSpanProcessor`: numbers steps, stamps spans with their execution, and reports live spans.

It runs in `on_start`, on the application thread, so it does only dictionary
work there: no I/O, no locks held across calls. With a store it also queues a
live row for each execution and step span, so a long execution is visible,
with its current step, while it runs (the span itself is queued; the writer
builds the row only if the span is still running when it gets to it).
Per-execution state lives only until the execution span ends, so memory does
not grow with the number of runs.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.util.types import AttributeValue

from otel_workflow import conventions as cv
from otel_workflow import numbering
from otel_workflow.rows import hex_span_id, span_attributes
from otel_workflow.store import TraceStore

logger = logging.getLogger("otel_workflow")


class WorkflowSpanProcessor(SpanProcessor):
    """Step numbering, execution stamping and live rows.

    `store`: where `running` rows go; without one the processor only enriches
    spans (for a service that exports OTLP only). `max_live_executions` bounds
    what it remembers of execution and step spans that started and have not
    ended, should they never end (oldest forgotten first).
    """

    def __init__(self, store: TraceStore | None = None, *, max_live_executions: int = 100_000) -> None:
        self.store = store
        self._max_live = max_live_executions
        # Span id of each execution and step span started here and not ended yet -> what its children
        # inherit. A child finds its parent by one lookup of its parent's span id, instead of asking
        # the context for the parent span and recognising it again (the fallback, for other parents).
        self._live: dict[int, _Parent] = {}
        self.evicted_executions = 0
        self._failed_once = False

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        try:
            self._on_start(span, parent_context)
        except Exception:  # a tracer must not crash its host
            if not self._failed_once:
                self._failed_once = True
                logger.exception("otel-workflow processor failed on span start; further failures are silent")

    def _on_start(self, span: Span, parent_context: otel_context.Context | None) -> None:
        # Plain-dict views: lookups through the SDK's Mapping wrappers cost a lock and an exception each.
        attributes = span_attributes(span)
        name = span.name
        parent = span.parent
        # Only a local parent can be a span of ours to inherit an execution from (a root span has no
        # parent; a remote one is a NonRecordingSpan): without one, most spans are done here.
        local_parent = parent is not None and not parent.is_remote
        if not local_parent and cv.plainly_not_workflow(name, attributes):
            return
        role = cv.role_of(name, attributes)
        step = role == cv.ROLE_STEP
        execution_id = cv.execution_id_of(attributes)
        workflow_id = attributes.get(cv.WORKFLOW_ID)
        added: dict[str, AttributeValue] = {}
        if (
            parent is not None
            and local_parent
            and (execution_id is None or (step and cv.STEP_PARENT_ID not in attributes))
        ):
            found = self._live.get(parent.span_id)
            if found is None or found.execution_id is None:
                # Not one of ours that is running, or one that got its execution id after it started.
                found = _recognised_parent(parent_context)
            if found is not None:
                if execution_id is None and found.execution_id is not None:
                    execution_id = added[cv.EXECUTION_ID] = found.execution_id
                    if found.workflow_id is not None and workflow_id is None:
                        workflow_id = added[cv.WORKFLOW_ID] = found.workflow_id
                if step and found.is_step and cv.STEP_PARENT_ID not in attributes:
                    added[cv.STEP_PARENT_ID] = hex_span_id(parent.span_id)
        if step and execution_id is not None and cv.STEP_SEQUENCE not in attributes:
            # A step the tracer did not number (it has its number in its start attributes).
            added[cv.STEP_SEQUENCE] = next(numbering.counter(execution_id))
        if added:
            span.set_attributes(added)
        if role is None:
            return
        context = span.context
        if context is not None:
            evicted = numbering.pop_oldest(self._live, self._max_live)
            if evicted is not None and not evicted.is_step:
                self.evicted_executions += 1
            self._live[context.span_id] = _Parent(execution_id, workflow_id, step)
        if self.store is not None:
            # The live row is built by the writer, and only if the span is still running by then.
            self.store.submit_running(span, execution_id)

    def on_end(self, span: ReadableSpan) -> None:
        try:
            context = span.context
            ended = None if context is None else self._live.pop(context.span_id, None)
            if ended is not None and not ended.is_step and ended.execution_id is not None:
                numbering.forget(ended.execution_id)
        except Exception:
            if not self._failed_once:
                self._failed_once = True
                logger.exception("otel-workflow processor failed on span end; further failures are silent")

    @property
    def live_executions(self) -> int:
        """Executions whose span started here and has not ended (the state this processor holds)."""
        return sum(1 for entry in list(self._live.values()) if not entry.is_step)

    def shutdown(self) -> None:
        """Nothing to release: the exporter that shares the store closes it."""

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        if self.store is None or self.store.read_only:
            return True
        return self.store.flush(timeout_millis / 1000)


class _Parent(NamedTuple):
    """What a child span inherits from an execution or step span."""

    execution_id: str | None
    workflow_id: Any
    is_step: bool


def _recognised_parent(parent_context: otel_context.Context | None) -> _Parent | None:
    """The parent span of the context, recognised from its attributes now (it is not one of ours that
    is still running: an HTTP span inside a step, a step that already ended)."""
    parent = trace.get_current_span(parent_context)
    if not isinstance(parent, ReadableSpan) or parent.context is None:
        return None
    attributes = span_attributes(parent)
    return _Parent(
        cv.execution_id_of(attributes), attributes.get(cv.WORKFLOW_ID), cv.is_step(parent.name, attributes)
    )
