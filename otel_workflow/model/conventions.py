"""Span names and attribute keys, and the recognition of executions and steps.

The tracer writes the `workflow.*` keys of DESIGN.md. Spans emitted by other
systems are recognised too: the Go engine's own keys (`execution.id`,
`step.sequence`, ...) and the OpenTelemetry CI/CD semantic conventions
(`cicd.pipeline.run.id`, `cicd.pipeline.task.run.id`, ...). Recognition reads
only a span's name and final attributes, so it gives the same answer in the
processor, the exporter and a rebuild from stored spans.

This module is the one place the rules are written. The C modules (`_native/spanrows.c`,
`_native/spanstart.c`) spell no key: they are given these constants at configure time
(`_native/rules.py`), and tests/test_native_conventions.py runs both over spans carrying each key
defined here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

EXECUTION_SPAN_NAME: Final = "workflow.execute"
STEP_SPAN_PREFIX: Final = "workflow.step."

WORKFLOW_ID: Final = "workflow.id"
EXECUTION_ID: Final = "workflow.execution.id"
TRIGGER_TYPE: Final = "workflow.trigger.type"
TRIGGERED_BY: Final = "workflow.triggered_by"
CONFIG_VERSION: Final = "workflow.config_version"
CAPTURE_IO: Final = "workflow.capture_io"

STEP_NAME: Final = "workflow.step.name"
STEP_TYPE: Final = "workflow.step.type"
STEP_SEQUENCE: Final = "workflow.step.sequence"
STEP_STATUS: Final = "workflow.step.status"
STEP_SKIP_REASON: Final = "workflow.step.skip_reason"
# Stamped by WorkflowSpanProcessor on a step whose parent span is a step (a sub-pipeline).
STEP_PARENT_ID: Final = "workflow.step.parent_id"

IO_INPUT_EVENT: Final = "workflow.step.input"
EXECUTION_INPUT_EVENT: Final = "workflow.execution.input"
IO_OUTPUT_EVENT: Final = "workflow.step.output"
IO_JSON: Final = "workflow.io.json"
# The events whose `IO_JSON` is a span's input or output (the output one gives `output_data`).
IO_EVENTS: Final = frozenset((IO_INPUT_EVENT, EXECUTION_INPUT_EVENT, IO_OUTPUT_EVENT))

# Keys of the Go workflow engine's own spans.
GO_EXECUTION_ID: Final = "execution.id"
GO_STEP_SEQUENCE: Final = "step.sequence"
GO_STEP_NAME: Final = "step.name"
GO_STEP_TYPE: Final = "step.type"

# OpenTelemetry CI/CD semantic conventions.
CICD_PIPELINE_NAME: Final = "cicd.pipeline.name"
CICD_RUN_ID: Final = "cicd.pipeline.run.id"
CICD_RESULT: Final = "cicd.pipeline.result"
CICD_TASK_RUN_ID: Final = "cicd.pipeline.task.run.id"
CICD_TASK_NAME: Final = "cicd.pipeline.task.name"
CICD_TASK_TYPE: Final = "cicd.pipeline.task.type"
CICD_TASK_RESULT: Final = "cicd.pipeline.task.run.result"

EXECUTION_ID_KEYS: Final = (EXECUTION_ID, GO_EXECUTION_ID, CICD_RUN_ID)

ROLE_EXECUTION: Final = "execution"
ROLE_STEP: Final = "step"

# The role rules (`role_of`): a span is a step if its name starts with STEP_SPAN_PREFIX or it has any
# of STEP_ROLE_KEYS; otherwise an execution if it is named EXECUTION_SPAN_NAME or has any of
# EXECUTION_ROLE_KEYS.
STEP_ROLE_KEYS: Final = (STEP_NAME, CICD_TASK_RUN_ID, CICD_TASK_NAME)
EXECUTION_ROLE_KEYS: Final = (CICD_RUN_ID,)

# The outcome of an ended execution or step (`workflow_status`), as stored.
STATUS_COMPLETED: Final = "completed"
STATUS_FAILED: Final = "failed"
STATUS_SKIPPED: Final = "skipped"
STATUS_COMPENSATED: Final = "compensated"

# CI/CD result values (semconv `cicd.pipeline.result`) mapped to our statuses.
_CICD_RESULTS: Final = {
    "success": STATUS_COMPLETED,
    "failure": STATUS_FAILED,
    "error": STATUS_FAILED,
    "timeout": STATUS_FAILED,
    "cancellation": STATUS_FAILED,
    "skip": STATUS_SKIPPED,
}


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def execution_id_of(attributes: Mapping[str, Any]) -> str | None:
    """The execution a span belongs to, by any of the recognised keys."""
    return _text(_pick(attributes.get, EXECUTION_ID_KEYS))


def is_step(name: str, attributes: Mapping[str, Any]) -> bool:
    if name.startswith(STEP_SPAN_PREFIX):
        return True
    for key in STEP_ROLE_KEYS:  # noqa: SIM110 - any() over a generator costs twice this
        if key in attributes:
            return True
    return False


def plainly_not_workflow(name: str, attributes: Mapping[str, Any]) -> bool:
    """True when a span is neither execution nor step and names no execution (most spans), by one
    set operation: `role_of` and `execution_id_of` give None for it. False means: ask them."""
    return (
        WORKFLOW_MARKERS.isdisjoint(attributes)
        and not name.startswith(STEP_SPAN_PREFIX)
        and name != EXECUTION_SPAN_NAME
    )


def role_of(name: str, attributes: Mapping[str, Any]) -> str | None:
    if is_step(name, attributes):
        return ROLE_STEP
    if name == EXECUTION_SPAN_NAME:
        return ROLE_EXECUTION
    for key in EXECUTION_ROLE_KEYS:
        if key in attributes:
            return ROLE_EXECUTION
    return None


# Not frozen: a frozen dataclass's __init__ costs about 3x a plain one, paid for every exported span.
@dataclass(slots=True)
class Recognised:
    """The workflow columns promoted out of one span's name and attributes (treat as read-only)."""

    role: str | None
    execution_id: str | None
    workflow_id: str | None = None
    step_name: str | None = None
    step_type: str | None = None
    step_sequence: int | None = None
    parent_step_id: str | None = None
    # An outcome the attributes state outright (skipped, compensated, a CI/CD result).
    declared_status: str | None = None
    trigger_type: str | None = None
    triggered_by: str | None = None
    config_version: str | None = None
    capture_io: bool = False


_INT64_MAX: Final = 2**63 - 1


def step_sequence(value: Any) -> int | None:
    """A step's sequence number from an attribute value: an int, or text of decimal digits, in BIGINT."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        digits = value.strip()
        if not digits.isdecimal():
            return None
        try:
            value = int(digits)
        except ValueError:  # beyond int()'s limit on digits
            return None
    if isinstance(value, int) and -_INT64_MAX <= value <= _INT64_MAX:
        return int(value)
    return None


def declared_result(value: Any) -> str | None:
    """Our status for a CI/CD result value (`cicd.pipeline.result`, `...task.run.result`), if any."""
    return _CICD_RESULTS.get(str(value).lower()) if value else None


def workflow_status(declared: str | None, failed: bool) -> str:
    """The stored status of an ended execution or step: `declared` is `Recognised.declared_status`,
    `failed` whether the span ended in error or declared a failure."""
    # Compensation is the outcome even of a step that failed; a step that failed after skip() failed.
    if declared == STATUS_COMPENSATED:
        return declared
    if failed:
        return STATUS_FAILED
    return STATUS_SKIPPED if declared == STATUS_SKIPPED else STATUS_COMPLETED


_NOT_WORKFLOW: Final = Recognised(role=None, execution_id=None)


def recognise(name: str, attributes: Mapping[str, Any]) -> Recognised:
    """Classify a span as execution, step or neither, and lift its workflow fields."""
    # Runs for every exported span: one bound `get`, key tuples prepared once.
    get = attributes.get
    role = role_of(name, attributes)
    execution_id = _text(_pick(get, EXECUTION_ID_KEYS))
    if role is None:
        # Most spans are neither: share one result instead of building one per span.
        return _NOT_WORKFLOW if execution_id is None else Recognised(role=None, execution_id=execution_id)
    workflow_id = _text(_pick(get, WORKFLOW_ID_KEYS))
    if role == ROLE_EXECUTION:
        return Recognised(
            role,
            execution_id,
            workflow_id,
            declared_status=declared_result(get(CICD_RESULT)),
            trigger_type=_text(_pick(get, TRIGGER_TYPE_KEYS)),
            triggered_by=_text(_pick(get, TRIGGERED_BY_KEYS)),
            config_version=_text(_pick(get, CONFIG_VERSION_KEYS)),
            capture_io=get(CAPTURE_IO) is True,
        )
    step_name = _pick(get, STEP_NAME_KEYS)
    if step_name is None:
        step_name = name[len(STEP_SPAN_PREFIX) :] if name.startswith(STEP_SPAN_PREFIX) else name
    declared = _pick(get, STEP_STATUS_KEYS)
    if declared is None:
        declared = declared_result(get(CICD_TASK_RESULT))
    return Recognised(
        role,
        execution_id,
        workflow_id,
        str(step_name),
        _text(_pick(get, STEP_TYPE_KEYS)),
        step_sequence(_pick(get, STEP_SEQUENCE_KEYS)),
        _text(_pick(get, STEP_PARENT_KEYS)),
        _text(declared),
    )


def _pick(get: Callable[[str], Any], keys: tuple[str, ...]) -> Any:
    """The first of `keys` with a value (not None, not empty)."""
    for key in keys:
        value = get(key)
        if value is not None and value != "":
            return value
    return None


# The keys that can give a span a role or an execution id (see `plainly_not_workflow`).
WORKFLOW_MARKERS: Final = frozenset((*EXECUTION_ID_KEYS, *STEP_ROLE_KEYS, *EXECUTION_ROLE_KEYS))
WORKFLOW_ID_KEYS: Final = (WORKFLOW_ID, CICD_PIPELINE_NAME)
TRIGGER_TYPE_KEYS: Final = (TRIGGER_TYPE,)
TRIGGERED_BY_KEYS: Final = (TRIGGERED_BY,)
CONFIG_VERSION_KEYS: Final = (CONFIG_VERSION,)
STEP_NAME_KEYS: Final = (STEP_NAME, GO_STEP_NAME, CICD_TASK_NAME)
STEP_STATUS_KEYS: Final = (STEP_STATUS,)
STEP_TYPE_KEYS: Final = (STEP_TYPE, GO_STEP_TYPE, CICD_TASK_TYPE)
STEP_SEQUENCE_KEYS: Final = (STEP_SEQUENCE, GO_STEP_SEQUENCE)
STEP_PARENT_KEYS: Final = (STEP_PARENT_ID,)
