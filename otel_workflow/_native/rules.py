"""The recognition rules of `model.conventions` as the C modules take them.

The C code spells no key, span name or status of its own: `ingest.convert` hands `RECOGNITION` to
the converter (`spanrows.configure`) and `sdk.processor` to the processor's hooks (`spanstart.Hooks`)
once, at configure time, and each reads the entries it needs by these names (`conventions.h`
`rules_text` / `rules_keys`, which check their types). Every value is a constant of `conventions`:
a new rule is written there, and reaches C through here.

tests/test_native_conventions.py runs the C and the Python paths over spans carrying each key
`conventions` defines and compares what they make.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from otel_workflow.model import conventions as cv

RECOGNITION: Final[Mapping[str, object]] = {
    # `conventions.role_of` as data (conventions.h `RoleKeys`): a step if the name starts with
    # `step_prefix` or any of `step_keys` is present; otherwise an execution if it is named
    # `execution_name` or any of `execution_keys` is present.
    "step_prefix": cv.STEP_SPAN_PREFIX,
    "step_keys": cv.STEP_ROLE_KEYS,
    "execution_name": cv.EXECUTION_SPAN_NAME,
    "execution_keys": cv.EXECUTION_ROLE_KEYS,
    "role_step": cv.ROLE_STEP,
    "role_execution": cv.ROLE_EXECUTION,
    # `conventions.recognise`: for each column, the keys it is read from, the first with a value wins.
    "execution_id_keys": cv.EXECUTION_ID_KEYS,
    "workflow_id_keys": cv.WORKFLOW_ID_KEYS,
    "trigger_type_keys": cv.TRIGGER_TYPE_KEYS,
    "triggered_by_keys": cv.TRIGGERED_BY_KEYS,
    "config_version_keys": cv.CONFIG_VERSION_KEYS,
    "step_name_keys": cv.STEP_NAME_KEYS,
    "step_status_keys": cv.STEP_STATUS_KEYS,
    "step_type_keys": cv.STEP_TYPE_KEYS,
    "step_sequence_keys": cv.STEP_SEQUENCE_KEYS,
    "step_parent_keys": cv.STEP_PARENT_KEYS,
    "execution_result_key": cv.CICD_RESULT,
    "step_result_key": cv.CICD_TASK_RESULT,
    "capture_io_key": cv.CAPTURE_IO,
    # `conventions.workflow_status`.
    "status_completed": cv.STATUS_COMPLETED,
    "status_failed": cv.STATUS_FAILED,
    "status_skipped": cv.STATUS_SKIPPED,
    "status_compensated": cv.STATUS_COMPENSATED,
    # The events that carry a step's input or output (the converter's `input_data`, `output_data`).
    "io_events": cv.IO_EVENTS,
    "io_output_event": cv.IO_OUTPUT_EVENT,
    # What the processor stamps on a span that starts (`processor._PythonHooks`), and
    # `conventions.plainly_not_workflow`'s markers.
    "markers": cv.WORKFLOW_MARKERS,
    "workflow_id_key": cv.WORKFLOW_ID,
    "execution_id_key": cv.EXECUTION_ID,
    "step_parent_key": cv.STEP_PARENT_ID,
    "step_sequence_key": cv.STEP_SEQUENCE,
}
