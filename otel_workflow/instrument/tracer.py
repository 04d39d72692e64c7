"""`WorkflowTracer`: executions and steps as OpenTelemetry spans.

`wf.execution(...)` and `wf.step(name)` are context managers (`with` and
`async with`) and decorators (sync and async functions). Each entry starts a
new span and makes it current, so nested steps, threads started with a copied
context, and asyncio tasks all see the right parent. An exception marks the
span failed (status ERROR with an `exception` event) and is re-raised.
"""

from __future__ import annotations

import contextvars
import logging
import os
import random
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.util.types import AttributeValue

from otel_workflow._version import __version__
from otel_workflow.instrument import numbering
from otel_workflow.instrument.capture.flag import (
    EXECUTION_INPUT_EVENT,
    begin_execution_capture,
    current_request_trigger,
    io_capture_enabled,
    record_payload,
)
from otel_workflow.instrument.scope import Closer, ReusableScope
from otel_workflow.model import conventions as cv

__all__ = ["Execution", "ExecutionScope", "Step", "StepScope", "WorkflowTracer"]

H = TypeVar("H", "Execution", "Step")

_INSTRUMENTATION_NAME = "otel_workflow"

logger = logging.getLogger("otel_workflow")


def new_execution_id() -> str:
    """A random version-4 UUID from a generator of our own, seeded from `os.urandom`, again after fork.

    Not `uuid.uuid4()`: its `os.urandom` is a system call that lets go of the GIL, and an application
    thread that lets go of the GIL that often keeps a thread waiting for it (our writer) from ever
    forcing a hand-over: a writer converting spans next to a loop of executions ran 9x slower. Not the
    global `random` either: an application that seeds it for its own purposes must not change our ids.
    """
    return str(uuid.UUID(int=_ids.getrandbits(128), version=4))


_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


class Execution:
    """The handle of a running execution."""

    __slots__ = ("_steps", "execution_id", "span", "workflow_id")

    def __init__(self, span: Span, execution_id: str, workflow_id: str, steps: Iterator[int]) -> None:
        self.span = span
        self.execution_id = execution_id
        self.workflow_id = workflow_id
        # Numbers its steps (`workflow.step.sequence`); shared with the processor (`numbering`).
        self._steps = steps

    def __repr__(self) -> str:
        return f"Execution({self.workflow_id!r}, {self.execution_id!r})"


class Step:
    """The handle of a running step."""

    __slots__ = ("execution", "name", "span")

    def __init__(self, span: Span, name: str, execution: Execution | None) -> None:
        self.span = span
        self.name = name
        self.execution = execution

    def skip(self, reason: str | None = None) -> None:
        """End state `skipped` instead of `completed`; the reason is kept as an attribute and a log row."""
        self.span.set_attribute(cv.STEP_STATUS, "skipped")
        if reason is not None:
            self.span.set_attribute(cv.STEP_SKIP_REASON, reason)
        self.span.add_event(
            "workflow.step.skipped", {"message": f"Step skipped: {reason or 'no reason given'}"}
        )

    def mark_compensated(self) -> None:
        """End state `compensated`: the step's effect was undone by a compensating action."""
        self.span.set_attribute(cv.STEP_STATUS, "compensated")

    def record_input(self, obj: object) -> None:
        """Record the step's input, when I/O capture is on in the current context; else do nothing.

        The object is turned into JSON (any type), redacted and cut to the policy's
        size limit (`otel_workflow.instrument.capture.flag.configure_capture`), then attached as
        event `workflow.step.input`. Never raises.
        """
        # The switch is checked before anything else: with capture off this costs one baggage lookup.
        if io_capture_enabled():
            _record(self.span, cv.IO_INPUT_EVENT, obj)

    def record_output(self, obj: object) -> None:
        """Record the step's output like `record_input`, as event `workflow.step.output`."""
        if io_capture_enabled():
            _record(self.span, cv.IO_OUTPUT_EVENT, obj)

    def __repr__(self) -> str:
        return f"Step({self.name!r})"


def _record(span: Span, event_name: str, obj: object) -> None:
    try:
        record_payload(span, event_name, obj)
    except Exception:  # recording must never break the step it describes
        logger.exception("otel-workflow could not record a payload")


_current_execution: contextvars.ContextVar[Execution | None] = contextvars.ContextVar(
    "otel_workflow_execution", default=None
)
_current_step: contextvars.ContextVar[Step | None] = contextvars.ContextVar(
    "otel_workflow_step", default=None
)


class _SpanScope(ReusableScope[H]):
    """One `with` block or decorated call: starts a span on entry and ends it on exit."""

    def _start(self) -> tuple[H, contextvars.Token[Any]]:
        raise NotImplementedError

    def _block_context(self, handle: H) -> otel_context.Context:
        """The context the block runs in: the current one with the handle's span."""
        return trace.set_span_in_context(handle.span)

    def _ended(self, handle: H) -> None:
        """After the span of `handle` ended."""

    def _open_entry(self) -> tuple[H, Closer]:
        handle, var_token = self._start()
        context_token = otel_context.attach(self._block_context(handle))

        def close(exc: BaseException | None) -> None:
            span = handle.span
            try:
                if exc is not None:
                    span.record_exception(exc, escaped=True)
                    message = str(exc)
                    name = type(exc).__name__
                    span.set_status(Status(StatusCode.ERROR, f"{name}: {message}" if message else name))
                else:
                    span.set_status(Status(StatusCode.OK))
                span.end()
            finally:
                otel_context.detach(context_token)
                var_token.var.reset(var_token)
                self._ended(handle)

        return handle, close


class ExecutionScope(_SpanScope[Execution]):
    """`with wf.execution(...) as run:`: one workflow run."""

    def __init__(
        self,
        tracer: WorkflowTracer,
        trigger_type: str | None,
        triggered_by: str | None,
        execution_id: str | None,
        attributes: Mapping[str, AttributeValue] | None,
        *,
        trigger_data: object = None,
    ) -> None:
        super().__init__()
        self._tracer = tracer
        self._trigger_type = trigger_type
        self._triggered_by = triggered_by
        self._execution_id = execution_id
        self._attributes = attributes
        self._trigger_data = trigger_data
        # Execution handle id -> the context the capture decision made for it (granted: marked as
        # holding a token; refused: without the switch). Set by `_start` and taken by `_block_context`
        # within one `__enter__`.
        self._capture_contexts: dict[int, otel_context.Context] = {}

    def _fresh(self) -> ExecutionScope:
        return ExecutionScope(
            self._tracer,
            self._trigger_type,
            self._triggered_by,
            None,
            self._attributes,
            trigger_data=self._trigger_data,
        )

    def _start(self) -> tuple[Execution, contextvars.Token[Any]]:
        tracer = self._tracer
        execution_id = self._execution_id or new_execution_id()
        attributes: dict[str, AttributeValue] = dict(self._attributes or {})
        attributes[cv.WORKFLOW_ID] = tracer.workflow_id
        attributes[cv.EXECUTION_ID] = execution_id
        trigger_type, triggered_by = self._trigger_type, self._triggered_by
        if trigger_type is None or triggered_by is None:
            # Inside the HTTP middleware: the request is the trigger.
            request = current_request_trigger()
            if request is not None:
                if trigger_type is None:
                    trigger_type = request.trigger_type
                if triggered_by is None:
                    triggered_by = request.triggered_by
        if trigger_type is not None:
            attributes[cv.TRIGGER_TYPE] = trigger_type
        if triggered_by is not None:
            attributes[cv.TRIGGERED_BY] = triggered_by
        if tracer.config_version is not None:
            attributes[cv.CONFIG_VERSION] = tracer.config_version
        # The rate limit applies here: a refused execution runs in a context without the switch, so
        # neither its steps nor the services it calls capture anything.
        capture, capture_context = begin_execution_capture()
        if capture:
            attributes[cv.CAPTURE_IO] = True
        span = tracer.otel_tracer.start_span(
            cv.EXECUTION_SPAN_NAME, kind=SpanKind.INTERNAL, attributes=attributes, record_exception=False
        )
        if capture and self._trigger_data is not None:
            _record(span, EXECUTION_INPUT_EVENT, self._trigger_data)
        # The execution's step counter: its steps and the ones the processor numbers share it.
        handle = Execution(span, execution_id, tracer.workflow_id, numbering.counter(execution_id))
        if capture_context is not None:
            self._capture_contexts[id(handle)] = capture_context
        return handle, _current_execution.set(handle)

    def _block_context(self, handle: Execution) -> otel_context.Context:
        # The span's context is built on the capture decision's one, so the block runs with it and one
        # detach on exit undoes both.
        base = self._capture_contexts.pop(id(handle), None)
        return trace.set_span_in_context(handle.span, base)

    def _ended(self, handle: Execution) -> None:
        numbering.forget(handle.execution_id, only=handle._steps)


class StepScope(_SpanScope[Step]):
    """`with wf.step("validate") as step:`: one step of the current execution."""

    def __init__(
        self,
        tracer: WorkflowTracer,
        name: str,
        step_type: str | None,
        attributes: Mapping[str, AttributeValue] | None,
    ) -> None:
        super().__init__()
        self._tracer = tracer
        self._name = name
        self._step_type = step_type
        self._attributes = attributes

    def _fresh(self) -> StepScope:
        return StepScope(self._tracer, self._name, self._step_type, self._attributes)

    def _start(self) -> tuple[Step, contextvars.Token[Any]]:
        execution = _current_execution.get()
        attributes: dict[str, AttributeValue] = dict(self._attributes or {})
        attributes[cv.STEP_NAME] = self._name
        if self._step_type is not None:
            attributes[cv.STEP_TYPE] = self._step_type
        if execution is not None:
            attributes[cv.EXECUTION_ID] = execution.execution_id
            attributes[cv.WORKFLOW_ID] = execution.workflow_id
            if cv.STEP_SEQUENCE not in attributes:
                # Numbered here, in the start attributes: setting it on the started span costs more.
                attributes[cv.STEP_SEQUENCE] = next(execution._steps)
        span = self._tracer.otel_tracer.start_span(
            cv.STEP_SPAN_PREFIX + self._name,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            record_exception=False,
        )
        handle = Step(span, self._name, execution)
        return handle, _current_step.set(handle)


class WorkflowTracer:
    """Instrumentation for one workflow: `execution()` for a run, `step()` for each step of it.

    `tracer_provider` defaults to the global provider. `config_version` (a hash or
    tag of the workflow's definition) is recorded on every execution.
    """

    def __init__(
        self,
        workflow_id: str,
        *,
        tracer_provider: TracerProvider | None = None,
        config_version: str | None = None,
    ) -> None:
        self.workflow_id = workflow_id
        self.config_version = config_version
        self.otel_tracer = trace.get_tracer(
            _INSTRUMENTATION_NAME, __version__, tracer_provider=tracer_provider
        )

    def execution(
        self,
        *,
        trigger_type: str | None = None,
        triggered_by: str | None = None,
        execution_id: str | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
        trigger_data: object = None,
    ) -> ExecutionScope:
        """A workflow run. `execution_id` defaults to a new UUID (a decorator always makes a new one).

        `trigger_type` and `triggered_by` default, inside the HTTP middleware
        (`otel_workflow.instrument.http.asgi` / `otel_workflow.instrument.http.wsgi`), to the request's
        "METHOD /path" and user. `trigger_data` (the request body, a message...)
        is recorded only when I/O capture is on, redacted and bounded like step
        I/O, as event `workflow.execution.input` of the execution span.
        """
        return ExecutionScope(
            self, trigger_type, triggered_by, execution_id, attributes, trigger_data=trigger_data
        )

    def step(
        self,
        name: str,
        *,
        step_type: str | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> StepScope:
        """A step of the current execution; steps may nest."""
        return StepScope(self, name, step_type, attributes)

    @staticmethod
    def current_execution() -> Execution | None:
        """The execution whose block is running in this context, if any."""
        return _current_execution.get()

    @staticmethod
    def current_step() -> Step | None:
        """The innermost step whose block is running in this context, if any."""
        return _current_step.get()
