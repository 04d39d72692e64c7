"""Issue 6, item 7: bad input from instrumentation. Attribute values of every OpenTelemetry type and of
wrong types, huge values and counts, invalid UTF-8 and lone surrogates, 100 KB span names, events with odd
timestamps, spans that end twice or never, clocks that go backwards. Each span is stored sanely or
rejected with a count; the exporter never raises into the SDK; a bad span never costs a good one its place.

Property-based: hypothesis builds `ReadableSpan` objects directly (so nothing in the SDK cleans them up
first) and the test exports them with `DuckDBSpanExporter.export` next to a well-formed span.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from support import epoch_us

from otel_workflow import DuckDBSpanExporter, TraceStore, WorkflowSpanProcessor, WorkflowTracer

_ids = itertools.count(1)


def fresh_context() -> SpanContext:
    number = next(_ids)
    return SpanContext(0xABC0000000000000 + number, 0x5000000000 + number, False, TraceFlags(1))


# -- strategies ------------------------------------------------------------------------------------------

LONE = ["\ud800", "a\udfffb", b"caf\xe9 \xff".decode("utf-8", "surrogateescape"), "\udcff" * 3]
SPECIAL_TEXT = [*LONE, "", "\x00nul\x00", "😀 ünïcödé", "workflow.execute", "workflow.step.x", "n" * 100_000]

texts = st.one_of(
    st.text(st.characters(codec=None), max_size=24),
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=4),  # lone surrogates only
    st.sampled_from(SPECIAL_TEXT),
)

OTEL_VALUES = st.one_of(
    texts,
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(texts, max_size=4).map(tuple),
    st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=4).map(tuple),
    st.lists(st.floats(), max_size=4),
    st.lists(st.booleans(), max_size=4),
)


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for you")

    __repr__ = __str__


WRONG_VALUES = st.one_of(
    st.none(),
    st.binary(max_size=16),
    st.integers(min_value=2**64, max_value=2**200) | st.integers(min_value=-(2**200), max_value=-(2**64)),
    st.dictionaries(texts, st.integers() | texts, max_size=3),
    st.lists(st.one_of(st.integers(), texts, st.none(), st.booleans()), max_size=4),  # mixed types
    st.lists(st.lists(st.integers(), max_size=2), max_size=2),  # nested
    st.builds(object),
    st.builds(Unprintable),
    st.decimals(allow_nan=True),
    st.just(datetime(2024, 1, 2, tzinfo=UTC)),
    st.complex_numbers(allow_nan=True),
    st.frozensets(st.integers(), max_size=3),
    st.sampled_from(["x" * 1_000_000]),  # a huge value
)

VALUES = OTEL_VALUES | WRONG_VALUES

WORKFLOW_KEYS = [
    "workflow.execution.id",
    "workflow.id",
    "workflow.step.name",
    "workflow.step.type",
    "workflow.step.sequence",
    "workflow.step.status",
    "workflow.trigger.type",
    "workflow.capture_io",
    "execution.id",
    "step.sequence",
    "cicd.pipeline.run.id",
    "cicd.pipeline.task.run.id",
    "cicd.pipeline.result",
]
keys = st.one_of(texts, st.sampled_from(WORKFLOW_KEYS))
attribute_maps = st.one_of(
    st.dictionaries(keys, VALUES, max_size=6),
    st.dictionaries(st.integers() | st.none(), VALUES, max_size=2),  # keys that are not text
    st.integers(min_value=1_000, max_value=3_000).map(lambda n: {f"k{i}": i for i in range(n)}),  # many
    st.none(),
)

NOW = time.time_ns()
timestamps = st.one_of(
    st.none(),
    st.integers(min_value=0, max_value=2**63 - 1),
    st.integers(min_value=-(2**63), max_value=-1),
    st.integers(min_value=2**63, max_value=2**70),
    st.sampled_from([0, 1, NOW, NOW - 10**18, 2**63 - 1]),
)


@st.composite
def events(draw: st.DrawFn) -> Event:
    name = draw(texts | st.sampled_from(["exception", "workflow.step.input", "workflow.step.output"]))
    attributes = draw(st.dictionaries(keys | st.just("workflow.io.json"), OTEL_VALUES, max_size=3))
    return Event(name, attributes, timestamp=draw(timestamps.filter(lambda t: t is not None)))


@st.composite
def odd_spans(draw: st.DrawFn) -> ReadableSpan:
    name = draw(texts | st.sampled_from(["workflow.execute", "workflow.step.validate"]))
    start = draw(timestamps)
    end = draw(
        st.one_of(
            timestamps,
            st.just(None if start is None else start - 5_000),  # the clock went backwards
        )
    )
    scope_name = draw(texts)
    return ReadableSpan(
        name=name,
        context=fresh_context(),
        parent=draw(st.none() | st.builds(fresh_context)),
        resource=Resource.create({"service.name": draw(texts)}),
        attributes=draw(attribute_maps),
        events=draw(st.lists(events(), max_size=3)),
        links=draw(st.lists(st.builds(lambda: Link(fresh_context(), {"why": "x"})), max_size=2)),
        kind=draw(st.sampled_from(list(SpanKind))),
        status=Status(draw(st.sampled_from([StatusCode.ERROR, StatusCode.OK, StatusCode.UNSET])), None),
        start_time=start,
        end_time=end,
        instrumentation_scope=InstrumentationScope(scope_name, draw(st.none() | texts)),
    )


def good_span() -> ReadableSpan:
    return ReadableSpan(
        name="good",
        context=fresh_context(),
        attributes={"fine": True},
        start_time=NOW,
        end_time=NOW + 1_000,
        resource=Resource.create({"service.name": "input"}),
    )


# -- the property ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TraceStore]:
    with TraceStore(tmp_path_factory.mktemp("input") / "odd.duckdb") as opened:
        yield opened


def span_id_of(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.span_id:016x}"


ODD = st.lists(odd_spans(), min_size=1, max_size=3)
SETTINGS = {
    "deadline": None,
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
}


@settings(max_examples=40, **SETTINGS)  # type: ignore[arg-type]
@given(spans=ODD)
def test_odd_spans_are_stored_sanely_or_counted(store: TraceStore, spans: list[ReadableSpan]) -> None:
    check_odd_spans(store, spans)


@pytest.mark.slow
@settings(max_examples=400, **SETTINGS)  # type: ignore[arg-type]
@given(spans=ODD)
def test_many_more_odd_spans(store: TraceStore, spans: list[ReadableSpan]) -> None:
    check_odd_spans(store, spans)


def safe_repr(value: object) -> str:
    try:
        return repr(value)[:80]
    except Exception:
        return f"<{type(value).__name__}>"


def describe(span: ReadableSpan) -> str:
    """What a failing example held (hypothesis prints it)."""
    fields = {
        "name": span.name[:200],
        "start": span.start_time,
        "end": span.end_time,
        "attributes": {safe_repr(k): safe_repr(v) for k, v in dict(span.attributes or {}).items()},
        "events": [(safe_repr(e.name), e.timestamp, safe_repr(e.attributes)) for e in span.events],
        "resource": dict(span.resource.attributes),
        "scope": span.instrumentation_scope,
        "status": (span.status.status_code, span.status.description),
    }
    return repr(fields)[:4000]


def check_odd_spans(store: TraceStore, spans: list[ReadableSpan]) -> None:
    for span in spans:
        note(describe(span))
    good = good_span()
    exporter = DuckDBSpanExporter(store)
    dropped_before = store.dropped_spans
    result = exporter.export([*spans, good])  # must not raise, whatever the spans hold
    assert result in (SpanExportResult.SUCCESS, SpanExportResult.FAILURE)
    assert exporter.force_flush()
    ids = [span_id_of(span) for span in spans]
    stored = {
        row[0]: row
        for row in store.sql(
            "SELECT span_id, name, start_time, end_time, duration_ms, attributes, json_valid(attributes), "
            "(SELECT count(*) FROM span_events e WHERE e.span_id = s.span_id AND e.trace_id = s.trace_id) "
            "FROM spans s WHERE span_id IN (SELECT unnest(?::VARCHAR[]))",
            [[*ids, span_id_of(good)]],
        )
    }
    # A bad span never costs a good one its place.
    assert span_id_of(good) in stored
    # Every odd span is stored, or rejected and counted: nothing disappears silently.
    rejected = store.dropped_spans - dropped_before
    assert store.dropped_spans == store.dropped_by_reason["rejected"]
    assert len([i for i in ids if i in stored]) + rejected == len(spans)
    for span in spans:
        row = stored.get(span_id_of(span))
        if row is None:
            continue
        _, name, start, end, duration_ms, attributes, valid, event_count = row
        assert valid is True
        assert isinstance(json.loads(attributes), dict)
        assert name == span.name.encode("utf-8", "replace").decode("utf-8")
        assert event_count == len(span.events)
        if span.start_time is not None and 0 <= span.start_time < 2**62:
            assert epoch_us(start) == span.start_time // 1000
            if span.end_time is not None and 0 <= span.end_time < 2**62:
                # Stored as recorded, even when the clock went backwards (a negative duration shows it).
                assert epoch_us(end) == span.end_time // 1000
                assert duration_ms is not None
                assert math.isclose(duration_ms, (span.end_time - span.start_time) / 1e6, abs_tol=1e-3)


def test_things_that_are_not_spans_do_not_reach_the_sdk(store: TraceStore) -> None:
    exporter = DuckDBSpanExporter(store)
    before = store.dropped_spans
    good = good_span()
    junk: list[Any] = [None, "a span?", 42, object(), ReadableSpan(name="no context")]
    assert exporter.export([*junk, good]) in (SpanExportResult.SUCCESS, SpanExportResult.FAILURE)
    assert exporter.force_flush()
    assert store.sql("SELECT count(*) FROM spans WHERE span_id = ?", [span_id_of(good)]) == [(1,)]
    assert store.dropped_spans - before == len(junk)
    assert exporter.export(None) in (SpanExportResult.SUCCESS, SpanExportResult.FAILURE)  # type: ignore[arg-type]
    assert exporter.export([]) is SpanExportResult.SUCCESS


# -- the same through the real SDK -------------------------------------------------------------------------


def test_odd_use_of_the_real_sdk(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "sdk.duckdb")
    provider = TracerProvider(
        resource=Resource.create({"service.name": "odd"}),
        span_limits=SpanLimits(max_attributes=64),
        shutdown_on_exit=False,
    )
    provider.add_span_processor(WorkflowSpanProcessor(store))
    provider.add_span_processor(SimpleSpanProcessor(DuckDBSpanExporter(store)))
    wf = WorkflowTracer("odd", tracer_provider=provider)
    tracer = wf.otel_tracer
    now = time.time_ns()
    with wf.execution(trigger_type="odd") as run:
        with wf.step("surrogates \ud800") as step:
            for index in range(80):
                step.span.set_attribute(f"many.{index}", index)  # beyond the limit: counted as dropped
            step.span.set_attribute("lone", "a\udfffb")
            step.span.set_attribute("bytes", b"\xff\xfe")
            step.span.set_attribute("wrong", {"a": 1})  # type: ignore[arg-type]
            step.span.set_attribute("none", None)  # type: ignore[arg-type]
            step.span.set_attribute("huge", "h" * 2_000_000)
            step.span.add_event("at zero", timestamp=0)
            step.span.add_event("far future", timestamp=2**62)
            step.span.add_event("\udcff event", {"k": "\ud800"})
        backwards = tracer.start_span("backwards", start_time=now)
        backwards.end(end_time=now - 1_000_000)  # the clock went backwards
        twice = tracer.start_span("n" * 100_000)
        twice.end()
        twice.end()  # the SDK ignores (and logs) the second end
        tracer.start_span("never ended")  # never exported; nothing to store
        run.span.set_attribute("workflow.step.sequence", 2**70)  # an odd value of one of our keys
    # Never ends (entered in a context of its own, so this thread's context is left as it was): its live
    # row turns `interrupted` at shutdown.
    contextvars.copy_context().run(wf.execution(trigger_type="never ends").__enter__)
    provider.shutdown()
    store.close()

    with TraceStore(tmp_path / "sdk.duckdb", read_only=True) as reader:
        assert store.dropped_spans == 0
        names = {name for (name,) in reader.sql("SELECT name FROM spans")}
        assert "workflow.step.surrogates ?" in names  # lone surrogates are replaced
        assert "n" * 100_000 in names
        assert "never ended" not in names
        [(attributes, dropped)] = reader.sql(
            "SELECT attributes, dropped_attributes FROM spans WHERE name LIKE 'workflow.step.%'"
        )
        stored = json.loads(attributes)
        assert stored["lone"] == "a?b"
        assert len(stored["huge"]) == 2_000_000
        assert stored.get("wrong") in (None, {"a": 1})  # dropped by the SDK, or kept as a map
        assert stored.get("bytes") in (None, "\ufffd\ufffd", "\\xff\\xfe")
        assert dropped > 0
        assert reader.sql("SELECT count(*) FROM spans WHERE name LIKE 'n%' AND length(name) = 100000") == [
            (1,)
        ]
        [(start, end, duration)] = reader.sql(
            "SELECT start_time, end_time, duration_ms FROM spans WHERE name = 'backwards'"
        )
        assert epoch_us(end) < epoch_us(start) and duration < 0
        events = dict(reader.sql("SELECT name, timestamp FROM span_events"))
        assert epoch_us(events["at zero"]) == 0
        assert "? event" in events
        statuses = dict(reader.sql("SELECT trigger_type, status FROM workflow_executions"))
        assert statuses == {"odd": "completed", "never ends": "failed"}
        [(error,)] = reader.sql(
            "SELECT error_message FROM workflow_executions WHERE trigger_type = 'never ends'"
        )
        assert "interrupted" in error


def test_decimal_and_datetime_values_round_trip_as_text(tmp_path: Path) -> None:
    with TraceStore(tmp_path / "t.duckdb") as store:
        span = good_span()
        span._attributes = {"d": Decimal("1.5"), "t": datetime(2024, 1, 2, tzinfo=UTC)}  # type: ignore[assignment]
        assert DuckDBSpanExporter(store).export([span]) is SpanExportResult.SUCCESS
        assert store.flush()
        [(attributes,)] = store.sql("SELECT attributes FROM spans")
        assert json.loads(attributes) == {"d": "1.5", "t": "2024-01-02 00:00:00+00:00"}
