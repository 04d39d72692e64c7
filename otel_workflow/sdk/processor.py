"""`WorkflowSpanProcessor`: numbers steps, stamps spans with their execution, and reports live spans.

It runs in `on_start`, on the application thread, so it does only dictionary
work there: no I/O, no locks held across calls. With a store it also queues a
live row for each execution and step span, so a long execution is visible,
with its current step, while it runs (the span itself is queued; the writer
builds the row only if the span is still running when it gets to it).
Per-execution state lives only until the execution span ends, so memory does
not grow with the number of runs.

The per-span work is done by hooks: in C (`_native/spanstart.c`) for the SDK's span
classes where the extension is built, else by `_PythonHooks`, the reference.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace.propagation import _SPAN_KEY
from opentelemetry.util.types import AttributeValue

from otel_workflow._native.rules import RECOGNITION
from otel_workflow.ingest.convert import hex_span_id, span_attributes
from otel_workflow.ingest.live import LiveRowGate
from otel_workflow.instrument import numbering
from otel_workflow.model import conventions as cv
from otel_workflow.storage.store import TraceStore

try:
    from otel_workflow._native import spanstart as _spanstart
except ImportError:  # built without a C compiler: the Python hooks do the same work
    _spanstart = None  # type: ignore[assignment]

logger = logging.getLogger("otel_workflow")

# A running execution or step span, by span id -> what its children inherit: (execution id,
# workflow id, is step). A plain tuple: the C hooks make and read them too.
_Entry = tuple[str | None, Any, bool]
_EXECUTION_ID, _IS_STEP = 0, 2


class WorkflowSpanProcessor(SpanProcessor):
    """Step numbering, execution stamping and live rows.

    `store`: where `running` rows go (a store opened read-only is refused with
    StoreError); without one the processor only enriches
    spans (for a service that exports OTLP only). `max_live_executions` bounds
    what it remembers of execution and step spans that started and have not
    ended, should they never end (oldest forgotten first).
    """

    def __init__(self, store: TraceStore | None = None, *, max_live_executions: int = 100_000) -> None:
        self.store = store
        # Each execution and step span started here and not ended yet. A child finds its parent by one
        # lookup of its parent's span id, instead of asking the context for the parent span and
        # recognising it again (the fallback, for other parents).
        self._live: dict[int, _Entry] = {}
        live_rows = None if store is None else store.live_rows  # a read-only store raises StoreError
        self._python = _PythonHooks(self._live, max_live_executions, live_rows)
        self._native = _native_hooks(self._python, max_live_executions, live_rows)
        if self._native is not None:
            # Instance attributes in place of the methods: the SDK calls the C functions directly,
            # with no Python frame in between (each costs about as much as the C work itself).
            self.on_start = self._native.on_start  # type: ignore[method-assign]
            self.on_end = self._native.on_end  # type: ignore[method-assign]

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        self._python.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        self._python.on_end(span)

    @property
    def native(self) -> bool:
        """Whether the C hooks do the per-span work (else the Python ones)."""
        return self._native is not None

    @property
    def live_executions(self) -> int:
        """Executions whose span started here and has not ended (the state this processor holds)."""
        return sum(1 for entry in list(self._live.values()) if not entry[_IS_STEP])

    @property
    def evicted_executions(self) -> int:
        """Running executions forgotten to keep within `max_live_executions`."""
        return self._python.evicted + (0 if self._native is None else self._native.evicted)

    def shutdown(self) -> None:
        """Nothing to release: the exporter that shares the store closes it."""

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        if self.store is None or self.store.read_only:
            return True
        return self.store.flush(timeout_millis / 1000)


class _PythonHooks:
    """on_start and on_end in Python: the reference of the C hooks, and what reads other span classes."""

    def __init__(self, live: dict[int, _Entry], max_live: int, live_rows: LiveRowGate | None) -> None:
        self._live = live
        self._max_live = max_live
        self._live_rows = live_rows
        self.evicted = 0
        self._failed_once = False

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        try:
            self._start(span, parent_context)
        except Exception as exc:  # a tracer must not crash its host
            self.failed("start", exc)

    def _start(self, span: Span, parent_context: otel_context.Context | None) -> None:
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
            if found is None or found[_EXECUTION_ID] is None:
                # Not one of ours that is running, or one that got its execution id after it started.
                found = recognised_parent(parent_context)
            if found is not None:
                found_execution, found_workflow, found_step = found
                if execution_id is None and found_execution is not None:
                    execution_id = added[cv.EXECUTION_ID] = found_execution
                    if found_workflow is not None and workflow_id is None:
                        workflow_id = added[cv.WORKFLOW_ID] = found_workflow
                if step and found_step and cv.STEP_PARENT_ID not in attributes:
                    added[cv.STEP_PARENT_ID] = hex_span_id(parent.span_id)
        if step and execution_id is not None and cv.STEP_SEQUENCE not in attributes:
            # A step the tracer did not number (it has its number in its start attributes).
            added[cv.STEP_SEQUENCE] = numbering.next_number(execution_id)
        if added:
            span.set_attributes(added)
        if role is None:
            return
        context = span.context
        if context is not None:
            evicted = numbering.pop_oldest(self._live, self._max_live)
            if evicted is not None and not evicted[_IS_STEP]:
                self.evicted += 1
            self._live[context.span_id] = (execution_id, workflow_id, step)
        if self._live_rows is not None:
            # The live row is built by the writer, and only if the span is still running by then.
            self._live_rows.submit(span, execution_id)

    def on_end(self, span: ReadableSpan) -> None:
        try:
            context = span.context
            ended = None if context is None else self._live.pop(context.span_id, None)
            if ended is not None:
                execution_id, _, step = ended
                if not step and execution_id is not None:
                    numbering.forget(execution_id)
        except Exception as exc:
            self.failed("end", exc)

    def failed(self, where: str, exc: BaseException | None) -> None:
        """A failure of ours in on_start or on_end (of either hooks): logged the first time only."""
        if not self._failed_once:
            self._failed_once = True
            logger.error(
                "otel-workflow processor failed on span %s; further failures are silent", where, exc_info=exc
            )


def recognised_parent(parent_context: otel_context.Context | None) -> _Entry | None:
    """The parent span of the context, recognised from its attributes now (it is not one of ours that
    is still running: an HTTP span inside a step, a step that already ended)."""
    parent = trace.get_current_span(parent_context)
    if not isinstance(parent, ReadableSpan) or parent.context is None:
        return None
    attributes = span_attributes(parent)
    return cv.execution_id_of(attributes), attributes.get(cv.WORKFLOW_ID), cv.is_step(parent.name, attributes)


# The SDK's tracer makes `_Span`s (a subclass of `Span` that only marks them as its own).
_SDK_SPAN_TYPES: tuple[type, ...] = tuple({Span, getattr(sdk_trace, "_Span", Span)})


def _current_context_var() -> ContextVar[otel_context.Context] | None:
    """The ContextVar that holds the current Context, where OpenTelemetry keeps it in one (its default
    runtime context); None otherwise (the C hooks then ask `recognised_parent`)."""
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    if type(runtime) is not ContextVarsRuntimeContext:
        return None
    found = getattr(runtime, "_current_context", None)
    return found if isinstance(found, ContextVar) else None


def _native_hooks(
    python: _PythonHooks, max_live: int, live_rows: LiveRowGate | None
) -> _spanstart.Hooks | None:
    """The C hooks, sharing the Python ones' running-span map; None where the extension is not built."""
    if _spanstart is None:
        return None
    return _spanstart.Hooks(
        live=python._live,
        max_live=max_live,
        span_types=_SDK_SPAN_TYPES,
        readable_type=ReadableSpan,
        bounded_type=BoundedAttributes,
        span_key=_SPAN_KEY,
        current_context=_current_context_var(),
        rules=RECOGNITION,
        fallback=python,
        number_step=numbering.next_number,
        forget=numbering.forget,
        live_rows=live_rows,
        recognised_parent=recognised_parent,
        on_failure=python.failed,
    )
