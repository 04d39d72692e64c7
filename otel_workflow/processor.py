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

import itertools
import logging
from collections.abc import Iterator
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from otel_workflow import conventions as cv
from otel_workflow.rows import hex_span_id, span_attributes
from otel_workflow.store import TraceStore

logger = logging.getLogger("otel_workflow")


class WorkflowSpanProcessor(SpanProcessor):
    """Step numbering, execution stamping and live rows.

    `store`: where `running` rows go; without one the processor only enriches
    spans (for a service that exports OTLP only). `max_live_executions` bounds
    the per-execution state should execution spans never end.
    """

    def __init__(self, store: TraceStore | None = None, *, max_live_executions: int = 100_000) -> None:
        self.store = store
        self._max_live = max_live_executions
        # execution id -> step counter. `next()` on itertools.count and single dict operations are atomic
        # under the GIL, which is what makes numbering correct across threads without a lock.
        self._counters: dict[str, Iterator[int]] = {}
        # span id of an execution span -> its execution id: on_end finds an ending execution by one lookup.
        self._execution_spans: dict[int, str] = {}
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
        parent_context_of_span = span.parent
        # Only a local parent can be a span of ours to inherit an execution from (a root span has no
        # parent; a remote one is a NonRecordingSpan): without one, most spans are done here.
        local_parent = parent_context_of_span is not None and not parent_context_of_span.is_remote
        if not local_parent and cv.plainly_not_workflow(name, attributes):
            return
        role = cv.role_of(name, attributes)
        step = role == cv.ROLE_STEP
        execution_id = cv.execution_id_of(attributes)
        if local_parent and (execution_id is None or step):
            parent = trace.get_current_span(parent_context)
            if isinstance(parent, ReadableSpan) and parent.context is not None:
                parent_attributes = span_attributes(parent)
                if execution_id is None:
                    execution_id = cv.execution_id_of(parent_attributes)
                    if execution_id is not None:
                        span.set_attribute(cv.EXECUTION_ID, execution_id)
                        workflow_id = parent_attributes.get(cv.WORKFLOW_ID)
                        if workflow_id is not None and cv.WORKFLOW_ID not in attributes:
                            span.set_attribute(cv.WORKFLOW_ID, workflow_id)
                nested = step and cv.STEP_PARENT_ID not in attributes
                if nested and cv.is_step(parent.name, parent_attributes):
                    span.set_attribute(cv.STEP_PARENT_ID, hex_span_id(parent.context.span_id))
        if step:
            if execution_id is not None and cv.STEP_SEQUENCE not in attributes:
                counter = self._counters.get(execution_id)
                if counter is None:
                    # The execution started elsewhere (another process) or its state was evicted.
                    counter = self._counters.setdefault(execution_id, itertools.count(1))
                span.set_attribute(cv.STEP_SEQUENCE, next(counter))
        elif role == cv.ROLE_EXECUTION:
            if execution_id is not None and span.context is not None:
                self._track(execution_id, span.context.span_id)
        else:
            return
        if self.store is not None:
            # The live row is built by the writer, and only if the span is still running by then.
            self.store.submit_running(span, execution_id)

    def _track(self, execution_id: str, span_id: int) -> None:
        if _evict_oldest(self._counters, self._max_live):
            self.evicted_executions += 1
        _evict_oldest(self._execution_spans, self._max_live)
        self._counters.setdefault(execution_id, itertools.count(1))
        self._execution_spans[span_id] = execution_id

    def on_end(self, span: ReadableSpan) -> None:
        try:
            context = span.context
            execution_id = None if context is None else self._execution_spans.pop(context.span_id, None)
            if execution_id is not None:
                self._counters.pop(execution_id, None)
        except Exception:
            if not self._failed_once:
                self._failed_once = True
                logger.exception("otel-workflow processor failed on span end; further failures are silent")

    @property
    def live_executions(self) -> int:
        """Executions whose span has started and not ended (the state this processor holds)."""
        return len(self._counters)

    def shutdown(self) -> None:
        """Nothing to release: the exporter that shares the store closes it."""

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        if self.store is None or self.store.read_only:
            return True
        return self.store.flush(timeout_millis / 1000)


def _evict_oldest(entries: dict[Any, Any], limit: int) -> bool:
    """Make room for one more entry; whether one was evicted (other threads may do it at the same time)."""
    if len(entries) < limit:
        return False
    try:
        del entries[next(iter(entries))]
    except (StopIteration, KeyError, RuntimeError):
        return False
    return True
