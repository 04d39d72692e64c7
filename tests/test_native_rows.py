"""The C converter (`otel_workflow/_native/spanrows.c`) gives the rows of the Python one, the reference.

Spans come from the real SDK (its attribute cleaning, bounded containers, events and links) and,
for values the SDK would not let through, from `ReadableSpan`s built by hand. Whatever the C code
does not read goes to the Python loop, so the two agree on every input, odd ones included.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from otel_workflow.ingest import convert as rows
from otel_workflow.ingest.convert import ConvertedSpans, SpanBatch, SpanConverter, owner_of, running_rows
from otel_workflow.model import conventions as cv

pytestmark = pytest.mark.skipif(
    not SpanConverter().native and not os.environ.get("OTEL_WORKFLOW_REQUIRE_NATIVE"),
    reason="otel_workflow._native.spanrows was not built (no C compiler at install)",
)


def both(spans: list[ReadableSpan]) -> tuple[SpanBatch | BaseException, SpanBatch | BaseException]:
    results: list[SpanBatch | BaseException] = []
    for native in (True, False):
        try:
            results.append(SpanConverter(native=native).finished(spans))
        except Exception as exc:
            results.append(exc)
    return results[0], results[1]


def assert_same_owners(spans: list[ReadableSpan]) -> None:
    """The writer's owner of each span (execution id, is its own span): C and Python agree."""
    assert rows._spanrows is not None
    native = rows._spanrows.owners(spans)
    # The SDK's own classes are read in C; others are left to Python (None).
    assert [owner is None for owner in native] == [type(span) not in (ReadableSpan, Span) for span in spans]
    assert rows.span_owners(spans) == [owner_of(span) for span in spans]


def assert_same_rows(spans: list[ReadableSpan]) -> SpanBatch:
    assert_same_owners(spans)
    native, python = both(spans)
    assert not isinstance(python, BaseException), python
    assert not isinstance(native, BaseException), native
    for table in ("spans", "events", "links"):
        ours, reference = getattr(native, table), getattr(python, table)
        assert ours.schema == reference.schema
        assert ours.to_pylist() == reference.to_pylist(), table
    assert_batch_splits(native, spans)
    return native


def assert_batch_splits(batch: SpanBatch, spans: list[ReadableSpan]) -> None:
    """What the writer reads from converted rows, once the span objects are gone: each span's owner,
    and halves (where the database refused a batch) that keep every event and link with its span."""
    assert batch.owners() == [owner_of(span) for span in spans if span.context is not None]
    first, rest = batch.halves()
    assert first.spans.num_rows == batch.spans.num_rows // 2
    whole = SpanBatch.concat([first, rest])
    for table in ("spans", "events", "links"):
        assert getattr(whole, table).to_pylist() == getattr(batch, table).to_pylist(), table
    for half in (first, rest):
        keys = set(zip(half.spans["trace_id"].to_pylist(), half.spans["span_id"].to_pylist(), strict=True))
        for table in (half.events, half.links):
            assert set(zip(table["trace_id"].to_pylist(), table["span_id"].to_pylist(), strict=True)) <= keys


def test_the_extension_is_built_where_ci_requires_it() -> None:
    # .ci/run sets this: a build that silently fell back to Python must not pass as the C one.
    if os.environ.get("OTEL_WORKFLOW_REQUIRE_NATIVE"):
        assert SpanConverter().native


# -- spans from the real SDK ---------------------------------------------------------------------

workflow_keys = st.sampled_from(
    [
        cv.WORKFLOW_ID,
        cv.EXECUTION_ID,
        cv.TRIGGER_TYPE,
        cv.TRIGGERED_BY,
        cv.CONFIG_VERSION,
        cv.CAPTURE_IO,
        cv.STEP_NAME,
        cv.STEP_TYPE,
        cv.STEP_SEQUENCE,
        cv.STEP_STATUS,
        cv.STEP_PARENT_ID,
        cv.GO_EXECUTION_ID,
        cv.GO_STEP_SEQUENCE,
        cv.GO_STEP_NAME,
        cv.CICD_PIPELINE_NAME,
        cv.CICD_RUN_ID,
        cv.CICD_RESULT,
        cv.CICD_TASK_RUN_ID,
        cv.CICD_TASK_NAME,
        cv.CICD_TASK_RESULT,
        "http.route",
        "db.statement",
    ]
)
text = st.text(max_size=12)
sdk_values = st.one_of(
    text,
    st.sampled_from(["", "skipped", "compensated", "failed", "success", "FAILURE", "7", " 12 ", "²"]),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(min_value=-5, max_value=5), max_size=3),
    st.lists(text, max_size=3),
)
sdk_attributes = st.dictionaries(st.one_of(workflow_keys, text), sdk_values, max_size=6)
span_names = st.one_of(
    st.sampled_from([cv.EXECUTION_SPAN_NAME, "workflow.step.fetch", "workflow.step.", "GET /x"]), text
)
event_names = st.one_of(
    st.sampled_from([cv.IO_INPUT_EVENT, cv.IO_OUTPUT_EVENT, cv.EXECUTION_INPUT_EVENT, "exception"]), text
)
payloads = st.one_of(st.just('{"a": [1, 2]}'), st.just("not json"), text, st.integers())


@st.composite
def sdk_span_plans(draw: st.DrawFn) -> dict[str, Any]:
    events = draw(
        st.lists(
            st.tuples(
                event_names,
                st.one_of(
                    sdk_attributes,
                    st.fixed_dictionaries({cv.IO_JSON: payloads}),
                    st.fixed_dictionaries({"exception.type": text, "exception.message": text}),
                ),
            ),
            max_size=3,
        )
    )
    return {
        "name": draw(span_names),
        "kind": draw(st.sampled_from(list(SpanKind))),
        "attributes": draw(sdk_attributes),
        "events": events,
        "links": draw(st.integers(min_value=0, max_value=2)),
        "status": draw(st.sampled_from([None, StatusCode.OK, StatusCode.ERROR])),
        "description": draw(st.one_of(st.none(), text)),
        "child": draw(st.booleans()),
    }


def record(plans: list[dict[str, Any]], resource: dict[str, Any]) -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create(resource),
        shutdown_on_exit=False,
        # Small limits, so that dropped counts appear.
        span_limits=SpanLimits(max_span_attributes=5, max_events=2, max_links=1),
    )
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("native-test", "1.2.3")
    other = provider.get_tracer("other-scope")
    for number, plan in enumerate(plans):
        links = [
            Link(SpanContext(number + 1, index + 1, is_remote=True), {"link.index": index})
            for index in range(plan["links"])
        ]
        with tracer.start_as_current_span("parent") if plan["child"] else _nothing():
            span = (tracer if number % 2 else other).start_span(
                plan["name"], kind=plan["kind"], attributes=plan["attributes"], links=links
            )
            for name, attributes in plan["events"]:
                span.add_event(name, attributes)
            if plan["status"] is not None:
                span.set_status(Status(plan["status"], plan["description"]))
            span.end()
    provider.shutdown()
    return list(memory.get_finished_spans())


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plans=st.lists(sdk_span_plans(), min_size=1, max_size=6),
    resource=st.dictionaries(text, st.one_of(text, st.integers()), max_size=3),
    service=st.one_of(st.none(), text),
)
def test_sdk_spans_give_the_same_rows(
    plans: list[dict[str, Any]], resource: dict[str, Any], service: str | None
) -> None:
    if service is not None:
        resource["service.name"] = service
    assert_same_rows(record(plans, resource))


# -- hand-made spans: values the SDK would clean away ----------------------------------------------

odd_values = st.one_of(
    sdk_values,
    st.just("lone \ud800 surrogate"),
    st.integers(min_value=2**63, max_value=2**70),
    st.just(2**64 + 1),
    st.dictionaries(text, st.integers(), max_size=2),
    st.just(b"bytes"),
    st.just(object()),
    st.just(math.nan),
    st.just("9" * 5000),
    st.just(True),
)


@st.composite
def hand_made_spans(draw: st.DrawFn) -> ReadableSpan:
    trace_id = draw(st.integers(min_value=1, max_value=2**128 - 1))
    span_id = draw(st.integers(min_value=1, max_value=2**64 - 1))
    start = draw(st.one_of(st.none(), st.integers(min_value=-(2**62), max_value=2**62)))
    end = draw(st.one_of(st.none(), st.integers(min_value=-(2**62), max_value=2**62)))
    attributes = draw(st.dictionaries(st.one_of(workflow_keys, text), odd_values, max_size=6))
    events = [
        Event(name, draw(st.dictionaries(st.one_of(text, st.just(cv.IO_JSON)), odd_values, max_size=2)), 17)
        for name in draw(st.lists(event_names, max_size=2))
    ]
    return ReadableSpan(
        name=draw(st.one_of(span_names, st.just("name \udcff"))),
        context=SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(1)),
        parent=draw(st.one_of(st.none(), st.just(SpanContext(trace_id, 5, is_remote=False)))),
        resource=Resource({"service.name": draw(st.one_of(text, st.just("svc \ud800")))}),
        attributes=attributes,
        events=events,
        links=(),
        kind=SpanKind.INTERNAL,
        status=Status(draw(st.sampled_from(list(StatusCode))), None),
        start_time=start,
        end_time=end,
        instrumentation_scope=draw(st.one_of(st.none(), st.just(InstrumentationScope("s", None)))),
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spans=st.lists(hand_made_spans(), min_size=1, max_size=4))
def test_odd_values_give_the_same_rows(spans: list[ReadableSpan]) -> None:
    assert_same_owners(spans)
    native, python = both(spans)
    if isinstance(python, BaseException):
        # The reference refuses them (the store then isolates and counts the span): so does the C path,
        # which hands such spans to it.
        assert type(native) is type(python), (native, python)
        return
    assert not isinstance(native, BaseException), native
    for table in ("spans", "events", "links"):
        assert getattr(native, table).to_pylist() == getattr(python, table).to_pylist(), table


def test_a_span_without_context_is_left_out() -> None:
    span = ReadableSpan(name="no context", context=None, start_time=1, end_time=2)
    batch = assert_same_rows([span])
    assert batch.spans.num_rows == 0


def test_a_step_sequence_of_digits_int_refuses_is_no_sequence() -> None:
    # "²" is a digit to str.isdigit() but int() refuses it: recognition used to raise on it.
    assert cv.step_sequence("²") is None
    assert cv.step_sequence(" 12 ") == 12
    assert cv.step_sequence("9" * 5000) is None
    assert cv.step_sequence(True) is None


# -- classes the C code does not read --------------------------------------------------------------


class RenamingSpan(ReadableSpan):
    """A subclass with an accessor of its own: its spans must go through the Python loop."""

    @property
    def name(self) -> str:
        return "renamed"


class PlainSubclass(ReadableSpan):
    """A subclass that keeps every accessor: the C code may read it."""


def _span(cls: type[ReadableSpan], span_id: int) -> ReadableSpan:
    return cls(
        name="original",
        context=SpanContext(1, span_id, is_remote=False),
        attributes={"k": "v"},
        start_time=1_000,
        end_time=3_000,
        resource=Resource({}),
    )


def test_a_subclass_with_its_own_accessors_is_converted_by_the_python_loop() -> None:
    batch = assert_same_rows([_span(RenamingSpan, 1), _span(PlainSubclass, 2), _span(ReadableSpan, 3)])
    assert batch.spans.column("name").to_pylist() == ["renamed", "original", "original"]


def test_a_span_type_that_is_not_a_readable_span_is_converted_by_the_python_loop() -> None:
    class Lookalike:
        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

        def __init__(self, inner: ReadableSpan) -> None:
            self._inner = inner

    batch = SpanConverter().finished([Lookalike(_span(ReadableSpan, 4))])  # type: ignore[list-item]
    assert batch.spans.column("span_id").to_pylist() == [f"{4:016x}"]


# -- live spans --------------------------------------------------------------------------------------


def test_running_rows_of_a_span_that_gains_events_while_it_is_converted() -> None:
    """A live row is cut from a span the application still writes to: conversion must not fail."""
    provider = TracerProvider(shutdown_on_exit=False)
    tracer = provider.get_tracer("live")
    span = tracer.start_span("workflow.step.busy", attributes={cv.STEP_NAME: "busy", cv.EXECUTION_ID: "e1"})
    stop = threading.Event()

    def write() -> None:
        count = 0
        while not stop.is_set():
            span.add_event("tick", {"n": count})
            span.set_attribute(f"key.{count % 50}", count)
            count += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        converter = SpanConverter()
        for _ in range(300):
            rows = running_rows(converter.finished([span]).spans)
            assert rows is not None
            assert rows.column("step_name").to_pylist() == ["busy"]
    finally:
        stop.set()
        writer.join()
        span.end()
        provider.shutdown()


def test_running_rows_keep_only_workflow_spans() -> None:
    spans = [
        _span(ReadableSpan, 1),
        ReadableSpan(
            name=cv.EXECUTION_SPAN_NAME,
            context=SpanContext(1, 2, is_remote=False),
            attributes={cv.EXECUTION_ID: "e1", cv.WORKFLOW_ID: "wf"},
            start_time=5_000,
        ),
    ]
    rows = running_rows(SpanConverter().finished(spans).spans)
    assert rows is not None
    assert rows.to_pylist()[0]["execution_id"] == "e1"
    assert rows.num_rows == 1
    assert running_rows(SpanConverter().finished(spans[:1]).spans) is None


def test_a_writing_store_does_not_load_pandas(tmp_path: Path) -> None:
    """With the C converter, Arrow is never built from Python values: pyarrow does not import pandas
    (about 50 MB) in a traced process (README, Performance: memory)."""
    script = f"""
import sys
from opentelemetry.sdk.trace import TracerProvider
from otel_workflow import TraceStore, WorkflowSpanProcessor, DuckDBSpanExporter
from opentelemetry.sdk.trace.export import BatchSpanProcessor
store = TraceStore({str(tmp_path / "t.duckdb")!r})
provider = TracerProvider(shutdown_on_exit=False)
provider.add_span_processor(WorkflowSpanProcessor(store))
provider.add_span_processor(BatchSpanProcessor(DuckDBSpanExporter(store)))
tracer = provider.get_tracer("t")
with tracer.start_as_current_span("workflow.execute", attributes={{"workflow.execution.id": "e1"}}):
    store.flush()
    with tracer.start_as_current_span("workflow.step.a"):
        pass
provider.shutdown()
store.flush()
assert store.sql("SELECT count(*) FROM spans")[0][0] == 2
store.close()
print("pandas" in sys.modules)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_the_batches_are_ordinary_arrow_tables() -> None:
    batch = SpanConverter().finished([_span(ReadableSpan, 9)])
    assert isinstance(batch.spans, pa.Table)
    batch.spans.validate(full=True)
    batch.events.validate(full=True)
    batch.links.validate(full=True)


def test_parts_imported_together_keep_their_own_rows() -> None:
    # The writer imports a cycle's parts as one stream per table (rows.tables_of); each part must still
    # give its own rows after that, for a retry or for halving a batch the database refused.
    plans = [
        {
            "name": f"span-{number}",
            "kind": SpanKind.INTERNAL,
            "attributes": {"n": number},
            "events": [("tick", {"i": index}) for index in range(number % 3)],
            "links": number % 2,
            "status": None,
            "description": None,
            "child": False,
        }
        for number in range(200)
    ]
    spans = record(plans, {"service.name": "parts"})
    slices = [spans[0:70], spans[70:71], [], spans[71:150], spans[150:200]]
    reference = [SpanConverter().finished(part) for part in slices]
    converter = SpanConverter()
    parts = [converter.convert(part) for part in slices]
    parts[1].tables()  # one already imported: the others still go together
    parts.append(ConvertedSpans.of(SpanConverter(native=False).finished(spans[:5])))
    reference.append(SpanConverter(native=False).finished(spans[:5]))
    together = rows.tables_of(parts)
    whole = SpanBatch.concat(reference)
    for table in ("spans", "events", "links"):
        assert getattr(together, table).to_pylist() == getattr(whole, table).to_pylist(), table
        getattr(together, table).validate(full=True)
        for part, expected in zip(parts, reference, strict=True):
            assert getattr(part.tables(), table).to_pylist() == getattr(expected, table).to_pylist(), table
