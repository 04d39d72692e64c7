"""The C modules apply the recognition rules of `model.conventions`, which they are given, not their own.

Every key, span name and value `conventions` defines goes on spans (alone, and in every pair), and
the C and the Python paths must agree on them: the converter's rows and owners
(`_native/spanrows.c` against `ingest.convert`'s Python loop), and the processor's hooks
(`_native/spanstart.c` against `processor._PythonHooks`: the attributes they stamp, the running
spans they hand to the live-row gate). The C modules are also shown to follow other rules when given
them, and their sources to spell none of the constants.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator

from otel_workflow import WorkflowSpanProcessor
from otel_workflow._native import rules
from otel_workflow.ingest import convert
from otel_workflow.ingest.convert import SpanConverter, owner_of
from otel_workflow.ingest.live import NATIVE_INTERFACE, LiveRowGate
from otel_workflow.instrument import numbering
from otel_workflow.model import conventions as cv
from otel_workflow.sdk import processor

NATIVE = Path(convert.__file__).parent.parent / "_native"


def constants() -> list[str]:
    """Every text constant of `conventions`: keys, span names, event names, roles, statuses."""
    found: list[str] = []
    for name, value in vars(cv).items():
        if not name.isupper() or name.startswith("_"):
            continue
        values = value if isinstance(value, tuple | frozenset) else (value,)
        found += [item for item in values if isinstance(item, str)]
    return sorted(set(found))


KEYS = constants()
NAMES = ["GET /orders", cv.EXECUTION_SPAN_NAME, cv.STEP_SPAN_PREFIX + "fetch", cv.STEP_SPAN_PREFIX]
VALUES: list[Any] = ["v", "", 3, "7", True, "success", "FAILURE", "skip", "skipped", "compensated", -1]


def test_the_keys_are_all_there() -> None:
    # What the rules handed to C name is among the constants this module puts on spans.
    for value in rules.RECOGNITION.values():
        for item in value if isinstance(value, tuple | frozenset) else (value,):
            assert item in KEYS, item
    assert {cv.GO_STEP_TYPE, cv.CICD_TASK_TYPE, cv.GO_EXECUTION_ID, cv.CICD_RUN_ID} <= set(KEYS)


def plans() -> Iterator[tuple[str, dict[str, Any]]]:
    """(span name, attributes): each constant alone with each value, and every pair of them."""
    for key, value, name in itertools.product(KEYS, VALUES, NAMES):
        yield name, {key: value}
    for (first, second), name in itertools.product(itertools.combinations(KEYS, 2), NAMES[:2]):
        yield name, {first: f"{first}!", second: 5}
        yield name, {first: "", second: "completed"}


class CountingIds(IdGenerator):
    """Ids 1, 2, 3, ...: the same spans get the same ids in each run (a stamped parent id is one)."""

    def __init__(self) -> None:
        self._next = itertools.count(1)

    def generate_span_id(self) -> int:
        return next(self._next)

    def generate_trace_id(self) -> int:
        return next(self._next)


def provider_with(*processors: Any) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "rules"}),
        id_generator=CountingIds(),
        shutdown_on_exit=False,
    )
    for added in processors:
        provider.add_span_processor(added)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def needs_c() -> None:
    if convert._spanrows is None or processor._spanstart is None:
        pytest.skip("the C modules were not built")


# -- the converter ---------------------------------------------------------------------------------


def converted_spans() -> list[ReadableSpan]:
    provider, exporter = provider_with()
    tracer = provider.get_tracer("rules")
    for name, attributes in plans():
        with tracer.start_as_current_span(name, attributes=attributes) as span:
            for event in sorted(cv.IO_EVENTS):
                span.add_event(event, {cv.IO_JSON: f'{{"{event}": 1}}'})
    provider.shutdown()
    return list(exporter.get_finished_spans())


def test_the_converters_agree_on_every_key() -> None:
    needs_c()
    spans = converted_spans()
    native = SpanConverter(native=True).finished(spans)
    python = SpanConverter(native=False).finished(spans)
    for table in ("spans", "events", "links"):
        assert getattr(native, table).to_pylist() == getattr(python, table).to_pylist(), table
    # The spans make every role and status: the comparison says something.
    assert set(python.spans.column("workflow_role").to_pylist()) == {None, cv.ROLE_STEP, cv.ROLE_EXECUTION}
    statuses = {cv.STATUS_COMPLETED, cv.STATUS_FAILED, cv.STATUS_SKIPPED, cv.STATUS_COMPENSATED}
    assert set(python.spans.column("workflow_status").to_pylist()) == {None, *statuses}
    assert python.spans.column("input_data").null_count < python.spans.num_rows
    assert python.spans.column("output_data").null_count < python.spans.num_rows


def test_the_owners_agree_on_every_key() -> None:
    needs_c()
    assert convert._spanrows is not None
    spans = converted_spans()
    reference = [owner_of(span) for span in spans]
    assert convert._spanrows.owners(spans) == reference
    assert {ends for _, ends in reference} == {True, False}


# -- the processor's hooks -------------------------------------------------------------------------


class HooksProcessor(SpanProcessor):
    """Hooks made here, as the SDK calls a span processor."""

    def __init__(self, hooks: Any) -> None:
        self._hooks = hooks

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self._hooks.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        self._hooks.on_end(span)


class GateStore:
    """What WorkflowSpanProcessor asks of a store: its live-row gate."""

    read_only = False

    def __init__(self) -> None:
        self.dropped = 0
        self.live_rows = LiveRowGate(lambda: None, self._count)
        self.live_rows.restart({}, 10**9)

    def _count(self, count: int) -> None:
        self.dropped += count

    def flush(self, timeout_s: float | None = None) -> bool:
        return True


def run_hooks(native: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], list[str], int]:
    """Every plan, as a root span and as the child of an execution, each with a span and a step below:
    the attributes each span ends with, the spans handed to the gate, and those it turned away."""
    with monkeypatch.context() as patch:
        if not native:
            patch.setattr(processor, "_spanstart", None)
        numbering._counters.clear()
        store = GateStore()
        hooks = WorkflowSpanProcessor(store)  # type: ignore[arg-type]
        assert hooks.native == native
        provider, exporter = provider_with(hooks)
        tracer = provider.get_tracer("rules")
        started: list[Any] = []  # the gate holds weak references: the spans are kept for it to tell
        for number, (name, attributes) in enumerate(plans()):
            for under_execution in (False, True):
                context = None
                if under_execution:
                    top = tracer.start_span(
                        cv.EXECUTION_SPAN_NAME, attributes={cv.EXECUTION_ID: f"e{number}"}
                    )
                    context = trace.set_span_in_context(top)
                    started.append(top)
                with (
                    tracer.start_as_current_span(name, context=context, attributes=attributes) as span,
                    tracer.start_as_current_span("SELECT 1") as child,
                    tracer.start_as_current_span(cv.STEP_SPAN_PREFIX + "inner") as step,
                ):
                    started += (span, child, step)
                if under_execution:
                    top.end()
        provider.shutdown()
        assert hooks.live_executions == 0
        ended = [(span.name, dict(span.attributes or {})) for span in exporter.get_finished_spans()]
        refs = store.live_rows.take()
        waiting = [span.name for ref in refs if (span := ref()) is not None]
        assert len(waiting) == len(refs)  # none lost to the weak references
        del started
        return ended, waiting, store.dropped


def test_the_hooks_agree_on_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    needs_c()
    native = run_hooks(True, monkeypatch)
    python = run_hooks(False, monkeypatch)
    assert native == python
    ended, waiting, _ = python
    # The hooks stamped something, and handed spans to the gate: the comparison says something.
    assert any(cv.STEP_SEQUENCE in attributes for _, attributes in ended)
    assert any(cv.STEP_PARENT_ID in attributes for _, attributes in ended)
    assert len(waiting) > len(ended) // 4


# -- other rules, and no constant spelled in C ------------------------------------------------------

OTHER_RULES: Mapping[str, object] = {
    **rules.RECOGNITION,
    "step_keys": ("custom.step",),
    "execution_keys": ("custom.run",),
    "execution_id_keys": ("custom.run",),
    "markers": frozenset(("custom.step", "custom.run")),
}


def test_the_converter_follows_the_rules_it_is_given() -> None:
    needs_c()
    assert convert._spanrows is not None
    provider, exporter = provider_with()
    tracer = provider.get_tracer("rules")
    for attributes in ({"custom.step": "a"}, {"custom.run": "r1"}, {cv.STEP_NAME: "a", cv.CICD_RUN_ID: "r2"}):
        tracer.start_span("op", attributes=attributes).end()
    spans = list(exporter.get_finished_spans())
    try:
        convert._spanrows.configure(convert.native_settings(), OTHER_RULES)
        rows = SpanConverter(native=True).finished(spans).spans
        owners = convert._spanrows.owners(spans)
    finally:
        convert.configure_native()
    assert rows.column("workflow_role").to_pylist() == [cv.ROLE_STEP, cv.ROLE_EXECUTION, None]
    assert rows.column("execution_id").to_pylist() == [None, "r1", None]
    assert owners == [(None, False), ("r1", True), (None, False)]
    assert SpanConverter(native=True).finished(spans).spans.column("workflow_role").to_pylist() == [
        None,
        None,
        cv.ROLE_STEP,
    ]


def test_the_hooks_follow_the_rules_they_are_given() -> None:
    needs_c()
    assert processor._spanstart is not None
    numbering._counters.clear()
    store = GateStore()
    python = processor._PythonHooks({}, 100, store.live_rows)
    hooks = processor._spanstart.Hooks(
        live=python._live,
        max_live=100,
        span_types=processor._SDK_SPAN_TYPES,
        readable_type=ReadableSpan,
        bounded_type=processor.BoundedAttributes,
        span_key=processor._SPAN_KEY,
        current_context=processor._current_context_var(),
        rules=OTHER_RULES,
        fallback=python,
        number_step=numbering.next_number,
        forget=numbering.forget,
        live_rows=store.live_rows,
        recognised_parent=processor.recognised_parent,
        on_failure=python.failed,
    )
    provider, exporter = provider_with(HooksProcessor(hooks))
    tracer = provider.get_tracer("rules")
    with tracer.start_as_current_span("run", attributes={"custom.run": "r1"}) as run:
        with tracer.start_as_current_span("task", attributes={"custom.step": "t"}) as task:
            pass
        with tracer.start_as_current_span(cv.STEP_SPAN_PREFIX + "named") as named:
            pass
    provider.shutdown()
    assert run and task and named  # kept for the gate's weak references
    ended = {span.name: dict(span.attributes or {}) for span in exporter.get_finished_spans()}
    # The task is a step of run r1 by the rules given (numbered, stamped); the prefix still makes a step.
    assert ended["task"][cv.STEP_SEQUENCE] == 1 and ended["task"][cv.EXECUTION_ID] == "r1"
    assert ended[cv.STEP_SPAN_PREFIX + "named"][cv.STEP_SEQUENCE] == 2
    waiting = [span.name for ref in store.live_rows.take() if (span := ref()) is not None]
    assert waiting == ["run", "task", cv.STEP_SPAN_PREFIX + "named"]


def test_the_hooks_refuse_a_gate_without_their_interface() -> None:
    needs_c()
    assert processor._spanstart is not None
    python = processor._PythonHooks({}, 100, None)

    class Partial:
        def __init__(self) -> None:
            self.open, self.limit, self.spans, self.refused = True, 1, [], {}

        def wake(self) -> None: ...

    for gate, ok in ((GateStore().live_rows, True), (Partial(), False)):
        made = lambda gate=gate: processor._spanstart.Hooks(  # noqa: E731
            live={},
            max_live=1,
            span_types=processor._SDK_SPAN_TYPES,
            readable_type=ReadableSpan,
            bounded_type=processor.BoundedAttributes,
            span_key=processor._SPAN_KEY,
            current_context=None,
            rules=rules.RECOGNITION,
            fallback=python,
            number_step=numbering.next_number,
            forget=numbering.forget,
            live_rows=gate,
            recognised_parent=processor.recognised_parent,
            on_failure=python.failed,
        )
        if ok:
            made()
        else:
            with pytest.raises(TypeError, match="dropped"):
                made()
    assert set(NATIVE_INTERFACE) == {"open", "limit", "refused", "spans", "wake", "dropped"}


@pytest.mark.parametrize("source", ["conventions.h", "spanrows.c", "spanstart.c"])
def test_the_c_sources_spell_no_constant_of_conventions(source: str) -> None:
    path = NATIVE / source
    if not path.exists():
        pytest.skip("installed without the C sources")
    literals = set(re.findall(r'"((?:[^"\\\n]|\\.)*)"', path.read_text()))
    assert literals & set(KEYS) == set()
