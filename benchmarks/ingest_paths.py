"""How fast do finished spans enter DuckDB: Arrow batches, the DuckDB 2 appender, or executemany?

Run from the repository root (about 45 s with the defaults on 2 vCPUs):

    . .venv/bin/activate
    python benchmarks/ingest_paths.py                  # 50,000 spans, 3 repetitions
    python benchmarks/ingest_paths.py --spans 200000 --repeat 5

What is generated (not timed): N finished spans from the real OpenTelemetry SDK (a
TracerProvider with a SimpleSpanProcessor into an InMemorySpanExporter), cut into batches of
512 spans, the BatchSpanProcessor's default export size. Every span has 10 attributes and 1
event. Each workflow run is one `workflow.execute` span, 4 `workflow.step.<name>` spans and 3
ordinary CLIENT spans (HTTP, SQL) under each step, so 5 of every 17 spans are execution or step
spans and get the promoted workflow columns; about 2 % of the ordinary spans fail with a
recorded exception, and steps of runs that capture I/O carry a `workflow.step.output` event.
The spans are then frozen out of the cyclic GC (`gc.freeze()`): an application never holds
50,000 spans at once, and a collection walking them would be charged to whichever method runs.

What is timed, per method, on a fresh DuckDB file (tempfile directory) created by
`otel_workflow.storage.schema.ensure_schema`, in this process, one transaction per batch of
`--batch-size` spans (as the store's writer does), with time.perf_counter_ns around each phase of each batch:

- convert: SDK span objects -> rows ready for DuckDB.
    arrow:      `otel_workflow.ingest.convert.SpanConverter().finished(batch)` (pyarrow tables; the C
                converter where it was built, as in the store).
    appender / executemany: `TupleConverter.finished(batch)` below, the same logic as the
                Python reference loop (`SpanConverter._python_batch`) line for line, emitting
                Python tuples instead of Arrow columns. The appender converts values as
                executemany parameters are and cannot cast an integer to TIMESTAMPTZ, so
                timestamps become aware `datetime` objects here (the Arrow path keeps integer
                microseconds).
- insert: rows -> committed. BEGIN; the `spans` rows and the `span_events` rows (there are no
  links); COMMIT.
    arrow:      `conn.register(name, table)` + `INSERT INTO <table> SELECT * FROM name` + unregister.
    appender:   `conn.appender(table)` (created per batch, inside the timing, as the store
                opens a connection per batch) + `append_rows(tuples)` + `flush()`.
    executemany: `conn.executemany("INSERT INTO <table> VALUES (?, ...)", tuples)`, on only
                the first `--executemany-spans` spans (default 1,024), since it is slow.
    arrow-store (only with --with-store, informational): the Arrow batch through the
                store's own `otel_workflow.storage.write.insert_finished` statements (skips re-exported
                spans, clears `running_spans`), run as one script the way the package's writer does.
- end-to-end = convert + insert, i.e. span objects -> rows committed.

Rates are `rows/s` of table rows committed (each span is one `spans` row plus one
`span_events` row, so rows = 2 x spans) and `spans/s`. Every figure is the median over
`--repeat` repetitions; methods run in a rotated order in each repetition. After the first
repetition the files are compared: the appender and executemany files must hold exactly
the rows of the Arrow file, or the script exits with status 1.
"""

from __future__ import annotations

import argparse
import gc
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from otel_workflow.ingest.convert import (
    _STATUS_NAMES,
    EVENTS_SCHEMA,
    SPANS_SCHEMA,
    SpanConverter,
    _error_message,
    _io_payload,
    _ResourceCache,
    attributes_json,
    hex_span_id,
    hex_trace_id,
    plain_attributes,
    span_attributes,
)
from otel_workflow.model import conventions as cv
from otel_workflow.model.utf8 import utf8
from otel_workflow.storage.schema import ensure_schema
from otel_workflow.storage.write import insert_finished

STEPS_PER_RUN = 4
CHILDREN_PER_STEP = 3
SPANS_PER_RUN = 1 + STEPS_PER_RUN * (1 + CHILDREN_PER_STEP)
ROWS_PER_SPAN = 2  # one `spans` row and one `span_events` row

Row = tuple[Any, ...]


# -- span generation (not timed) ------------------------------------------------------------------


def generate_spans(count: int, seed: int) -> list[ReadableSpan]:
    """`count` finished SDK spans, 10 attributes and 1 event each, in the order they ended."""
    rng = random.Random(seed)
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": "ingest-bench", "service.version": "1.4.2", "deployment.environment": "bench"}
        )
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("benchmarks.ingest_paths", "0.1.0")
    run = 0
    while len(exporter.get_finished_spans()) < count:
        _one_run(tracer, rng, run)
        run += 1
    provider.shutdown()
    return list(exporter.get_finished_spans()[:count])


def _one_run(tracer: trace.Tracer, rng: random.Random, run: int) -> None:
    execution_id = f"exec-{run:08d}-{rng.getrandbits(32):08x}"
    workflow_id = f"order-pipeline-{run % 7}"
    capture_io = run % 3 == 0
    with tracer.start_as_current_span(
        cv.EXECUTION_SPAN_NAME,
        attributes={
            cv.WORKFLOW_ID: workflow_id,
            cv.EXECUTION_ID: execution_id,
            cv.TRIGGER_TYPE: rng.choice(["schedule", "api", "manual"]),
            cv.TRIGGERED_BY: f"user-{rng.randrange(100)}",
            cv.CONFIG_VERSION: f"v{run % 5}",
            cv.CAPTURE_IO: capture_io,
            "app.tenant": f"tenant-{rng.randrange(20)}",
            "app.region": rng.choice(["eu-west-1", "us-east-1"]),
            "app.attempt": 1,
            "app.batch_size": rng.randrange(1, 500),
        },
    ) as execution:
        execution.add_event("log", {"message": f"run {run} started", "log.severity": "info"})
        for sequence, (step, step_type) in enumerate(
            [("fetch", "io"), ("validate", "python"), ("enrich", "http"), ("store", "sql")][:STEPS_PER_RUN]
        ):
            with tracer.start_as_current_span(
                cv.STEP_SPAN_PREFIX + step,
                attributes={
                    cv.EXECUTION_ID: execution_id,
                    cv.WORKFLOW_ID: workflow_id,
                    cv.STEP_NAME: step,
                    cv.STEP_TYPE: step_type,
                    cv.STEP_SEQUENCE: sequence,
                    "code.function": f"pipeline.{step}",
                    "code.namespace": "app.pipeline",
                    "app.items": rng.randrange(1000),
                    "app.cache_hit": rng.random() < 0.5,
                    "app.elapsed_budget_ms": rng.random() * 1000,
                },
            ) as step_span:
                for child in range(CHILDREN_PER_STEP):
                    _child_span(tracer, rng, child)
                if capture_io:
                    payload = f'{{"items": {rng.randrange(1000)}, "ok": true, "step": "{step}"}}'
                    step_span.add_event(cv.IO_OUTPUT_EVENT, {cv.IO_JSON: payload})
                else:
                    step_span.add_event("log", {"message": f"{step} done", "log.severity": "info"})


def _child_span(tracer: trace.Tracer, rng: random.Random, child: int) -> None:
    if child % 2 == 0:
        name, kind = "GET /api/items/{id}", SpanKind.CLIENT
        attributes: dict[str, Any] = {
            "http.request.method": "GET",
            "url.full": f"https://inventory.internal/api/items/{rng.randrange(10**6)}",
            "server.address": "inventory.internal",
            "server.port": 443,
            "http.response.status_code": 200,
            "network.protocol.version": "1.1",
            "user_agent.original": "python-httpx/0.27",
            "http.route": "/api/items/{id}",
            "app.retry": 0,
            "app.cache_hit": False,
        }
    else:
        name, kind = "SELECT orders", SpanKind.CLIENT
        attributes = {
            "db.system.name": "postgresql",
            "db.namespace": "shop",
            "db.collection.name": "orders",
            "db.operation.name": "SELECT",
            "db.query.text": "SELECT id, total FROM orders WHERE customer_id = $1",
            "server.address": "db.internal",
            "server.port": 5432,
            "db.response.returned_rows": rng.randrange(50),
            "app.pool": "primary",
            "app.slow": False,
        }
    with tracer.start_as_current_span(name, kind=kind, attributes=attributes, record_exception=False) as span:
        if rng.random() < 0.02:
            try:
                raise TimeoutError(f"upstream timed out after {rng.randrange(1, 30)}s")
            except TimeoutError as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
        else:
            span.add_event("log", {"message": "response received", "bytes": rng.randrange(10**5)})


# -- the tuple conversion for the appender and executemany -------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ts(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


class TupleConverter:
    """`SpanConverter._python_batch` line for line, emitting tuples in table column order.

    The only difference: timestamps are aware datetimes, since the appender (like
    executemany) will not cast an integer to TIMESTAMPTZ.
    """

    def __init__(self) -> None:
        self._resources = _ResourceCache()

    def finished(self, spans: Sequence[ReadableSpan]) -> tuple[list[Row], list[Row]]:
        span_rows: list[Row] = []
        event_rows: list[Row] = []
        for span in spans:
            context = span.context
            if context is None:
                continue
            trace_id = hex_trace_id(context.trace_id)
            span_id = hex_span_id(context.span_id)
            parent = span.parent
            attributes = span_attributes(span)
            name = utf8(span.name)
            start = span.start_time or 0
            end = span.end_time if span.end_time is not None else start
            resource = self._resources.get(span.resource)
            scope = span.instrumentation_scope
            found = cv.recognise(name, attributes)
            failed = span.status.status_code is StatusCode.ERROR or found.declared_status == "failed"
            input_data = output_data = None
            for index, event in enumerate(span.events):
                event_attributes = plain_attributes(event.attributes)
                if event.name in (cv.IO_INPUT_EVENT, cv.EXECUTION_INPUT_EVENT):
                    input_data = _io_payload(event_attributes)
                elif event.name == cv.IO_OUTPUT_EVENT:
                    output_data = _io_payload(event_attributes)
                event_rows.append(
                    (
                        trace_id,
                        span_id,
                        index,
                        utf8(event.name),
                        _ts(event.timestamp // 1000),
                        attributes_json(event_attributes),
                    )
                )
            # The benchmark spans carry no links, so the `span_links` rows are left out.
            span_rows.append(
                (
                    trace_id,
                    span_id,
                    None if parent is None else hex_span_id(parent.span_id),
                    name,
                    span.kind.name,
                    _ts(start // 1000),
                    _ts(end // 1000),
                    (end - start) / 1e6,
                    _STATUS_NAMES[span.status.status_code],
                    None if span.status.description is None else utf8(span.status.description),
                    resource.service_name,
                    resource.attributes_json,
                    None if scope is None else scope.name,
                    None if scope is None else scope.version,
                    attributes_json(attributes),
                    span.dropped_attributes,
                    span.dropped_events,
                    span.dropped_links,
                    found.role,
                    found.execution_id,
                    found.workflow_id,
                    found.step_name,
                    found.step_type,
                    found.step_sequence,
                    found.parent_step_id,
                    None if found.role is None else cv.workflow_status(found.declared_status, failed),
                    _error_message(span) if failed else None,
                    found.trigger_type,
                    found.triggered_by,
                    found.config_version,
                    found.capture_io if found.role is not None else None,
                    input_data,
                    output_data,
                )
            )
        return span_rows, event_rows


# -- the methods ------------------------------------------------------------------------------------


@dataclass
class Timing:
    convert_ns: int = 0
    insert_ns: int = 0
    spans: int = 0

    @property
    def total_ns(self) -> int:
        return self.convert_ns + self.insert_ns


def _insert_arrow(conn: duckdb.DuckDBPyConnection, table_name: str, table: pa.Table) -> None:
    if table.num_rows == 0:
        return
    conn.register("_bench_batch", table)
    conn.execute(f"INSERT INTO {table_name} SELECT * FROM _bench_batch")
    conn.unregister("_bench_batch")


def run_arrow(conn: duckdb.DuckDBPyConnection, batches: Sequence[Sequence[ReadableSpan]]) -> Timing:
    converter = SpanConverter()
    timing = Timing()
    clock = time.perf_counter_ns
    for spans in batches:
        t0 = clock()
        batch = converter.finished(spans)
        t1 = clock()
        conn.execute("BEGIN TRANSACTION")
        _insert_arrow(conn, "spans", batch.spans)
        _insert_arrow(conn, "span_events", batch.events)
        _insert_arrow(conn, "span_links", batch.links)
        conn.execute("COMMIT")
        t2 = clock()
        timing.convert_ns += t1 - t0
        timing.insert_ns += t2 - t1
        timing.spans += len(spans)
    return timing


def run_arrow_store(conn: duckdb.DuckDBPyConnection, batches: Sequence[Sequence[ReadableSpan]]) -> Timing:
    converter = SpanConverter()
    timing = Timing()
    clock = time.perf_counter_ns
    for spans in batches:
        t0 = clock()
        batch = converter.finished(spans)
        t1 = clock()
        conn.execute("BEGIN TRANSACTION")
        conn.execute(";\n".join(insert_finished(conn, batch)))  # the statements, as one script
        conn.execute("COMMIT")
        t2 = clock()
        timing.convert_ns += t1 - t0
        timing.insert_ns += t2 - t1
        timing.spans += len(spans)
    return timing


def run_appender(conn: duckdb.DuckDBPyConnection, batches: Sequence[Sequence[ReadableSpan]]) -> Timing:
    converter = TupleConverter()
    timing = Timing()
    clock = time.perf_counter_ns
    for spans in batches:
        t0 = clock()
        span_rows, event_rows = converter.finished(spans)
        t1 = clock()
        conn.execute("BEGIN TRANSACTION")
        for table_name, rows in (("spans", span_rows), ("span_events", event_rows)):
            if rows:
                appender = conn.appender(table_name)
                appender.append_rows(rows)
                appender.flush()
        conn.execute("COMMIT")
        t2 = clock()
        timing.convert_ns += t1 - t0
        timing.insert_ns += t2 - t1
        timing.spans += len(spans)
    return timing


_SPANS_INSERT = f"INSERT INTO spans VALUES ({', '.join('?' * len(SPANS_SCHEMA))})"
_EVENTS_INSERT = f"INSERT INTO span_events VALUES ({', '.join('?' * len(EVENTS_SCHEMA))})"


def run_executemany(conn: duckdb.DuckDBPyConnection, batches: Sequence[Sequence[ReadableSpan]]) -> Timing:
    converter = TupleConverter()
    timing = Timing()
    clock = time.perf_counter_ns
    for spans in batches:
        t0 = clock()
        span_rows, event_rows = converter.finished(spans)
        t1 = clock()
        conn.execute("BEGIN TRANSACTION")
        conn.executemany(_SPANS_INSERT, span_rows)
        if event_rows:
            conn.executemany(_EVENTS_INSERT, event_rows)
        conn.execute("COMMIT")
        t2 = clock()
        timing.convert_ns += t1 - t0
        timing.insert_ns += t2 - t1
        timing.spans += len(spans)
    return timing


Runner = Callable[[duckdb.DuckDBPyConnection, Sequence[Sequence[ReadableSpan]]], Timing]


@dataclass
class Method:
    name: str
    run: Runner
    subset: bool = False
    informational: bool = False
    timings: list[Timing] = field(default_factory=list)


# -- measurement and report ---------------------------------------------------------------------------


def batched(spans: Sequence[ReadableSpan], size: int) -> list[list[ReadableSpan]]:
    return [list(spans[i : i + size]) for i in range(0, len(spans), size)]


def measure_once(
    method: Method, batches: Sequence[Sequence[ReadableSpan]], path: Path
) -> tuple[Timing, int, int]:
    conn = duckdb.connect(str(path))
    try:
        ensure_schema(conn)
        gc.collect()
        timing = method.run(conn, batches)
        spans_row = conn.execute("SELECT count(*) FROM spans").fetchone()
        events_row = conn.execute("SELECT count(*) FROM span_events").fetchone()
    finally:
        conn.close()
    return timing, spans_row[0] if spans_row else 0, events_row[0] if events_row else 0


def same_content(reference: Path, other: Path, subset: bool) -> list[str]:
    """Differences between two files' `spans` and `span_events` (empty if none)."""
    problems = []
    conn = duckdb.connect()
    try:
        conn.execute(f"ATTACH '{reference}' AS ref (READ_ONLY)")
        conn.execute(f"ATTACH '{other}' AS oth (READ_ONLY)")
        for table in ("spans", "span_events"):
            extra = conn.execute(
                f"SELECT count(*) FROM (SELECT * FROM oth.{table} EXCEPT ALL SELECT * FROM ref.{table})"
            ).fetchone()
            if extra and extra[0]:
                problems.append(f"{other.stem}: {extra[0]} {table} rows not in {reference.stem}")
            if not subset:
                missing = conn.execute(
                    f"SELECT count(*) FROM (SELECT * FROM ref.{table} EXCEPT ALL SELECT * FROM oth.{table})"
                ).fetchone()
                if missing and missing[0]:
                    problems.append(f"{other.stem}: {missing[0]} {table} rows of {reference.stem} missing")
    finally:
        conn.close()
    return problems


def median_timing(timings: Sequence[Timing]) -> Timing:
    return Timing(
        convert_ns=int(statistics.median(t.convert_ns for t in timings)),
        insert_ns=int(statistics.median(t.insert_ns for t in timings)),
        spans=timings[0].spans,
    )


def rate(count: int, ns: int) -> float:
    return count / (ns / 1e9) if ns else float("inf")


def print_environment(args: argparse.Namespace) -> None:
    conn = duckdb.connect()
    threads = conn.execute("SELECT current_setting('threads')").fetchone()
    conn.close()
    print("Environment")
    print(f"  python              {platform.python_version()} ({platform.python_implementation()})")
    print(f"  platform            {platform.platform()}, {platform.machine()}")
    print(f"  duckdb              {duckdb.__version__} (threads={threads[0] if threads else '?'})")
    print(f"  pyarrow             {pa.__version__}")
    print(f"  opentelemetry-sdk   {version('opentelemetry-sdk')}")
    print(
        f"  workload            {args.spans:,} spans in batches of {args.batch_size}, 10 attributes "
        f"+ 1 event each, one transaction per batch; executemany on the first "
        f"{args.executemany_spans:,} spans; median of {args.repeat}"
    )


def print_results(methods: Sequence[Method]) -> None:
    medians = {m.name: median_timing(m.timings) for m in methods}
    header = (
        f"{'method':<12} {'spans':>7} {'convert ms':>11} {'insert ms':>10} {'total ms':>9} "
        f"{'convert spans/s':>16} {'insert rows/s':>14} {'e2e rows/s':>11} {'e2e spans/s':>12} "
        f"{'e2e spread':>10}"
    )
    print()
    print("Results (medians; rows = spans rows + span_events rows = 2 per span)")
    print(header)
    print("-" * len(header))
    for m in methods:
        t = medians[m.name]
        totals = [x.total_ns for x in m.timings]
        spread = (max(totals) - min(totals)) / statistics.median(totals) * 100
        rows = t.spans * ROWS_PER_SPAN
        label = m.name + (" *" if m.informational else "")
        print(
            f"{label:<12} {t.spans:>7,} {t.convert_ns / 1e6:>11.1f} {t.insert_ns / 1e6:>10.1f} "
            f"{t.total_ns / 1e6:>9.1f} {rate(t.spans, t.convert_ns):>16,.0f} "
            f"{rate(rows, t.insert_ns):>14,.0f} {rate(rows, t.total_ns):>11,.0f} "
            f"{rate(t.spans, t.total_ns):>12,.0f} {spread:>9.0f}%"
        )
    if any(m.informational for m in methods):
        print("  * the Arrow batch through write.insert_finished (dedup check + running_spans delete)")
    print("  e2e spread: (max - min) / median of the end-to-end time over the repetitions")

    def ratio(a: str, b: str, attr: str) -> float:
        ta, tb = medians[a], medians[b]
        return rate(ta.spans, getattr(ta, attr)) / rate(tb.spans, getattr(tb, attr))

    print()
    print("Ratios of rates (higher = first is faster)")
    print(f"{'':<26} {'insert-only':>12} {'end-to-end':>11} {'convert':>8}")
    for a, b in (("arrow", "executemany"), ("appender", "executemany"), ("arrow", "appender")):
        # executemany converts only its small prefix with the appender's code: no conversion ratio.
        convert = "-" if b == "executemany" else f"{ratio(a, b, 'convert_ns'):.2f}x"
        print(
            f"{a + ' / ' + b:<26} {ratio(a, b, 'insert_ns'):>11.1f}x {ratio(a, b, 'total_ns'):>10.1f}x "
            f"{convert:>8}"
        )
    arrow, appender = medians["arrow"], medians["appender"]
    print()
    for phase, attr in (("end-to-end", "total_ns"), ("insert-only", "insert_ns")):
        arrow_first = getattr(arrow, attr) <= getattr(appender, attr)
        fast, slow = ("arrow", "appender") if arrow_first else ("appender", "arrow")
        print(f"Faster {phase}: {fast} ({ratio(fast, slow, attr):.2f}x {slow})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--spans", type=int, default=50_000, help="finished spans to ingest (default 50,000)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions; medians reported (default 3)")
    parser.add_argument("--batch-size", type=int, default=512, help="spans per transaction (default 512)")
    parser.add_argument(
        "--executemany-spans",
        type=int,
        default=1024,
        help="spans for the slow executemany path (default 1,024)",
    )
    parser.add_argument(
        "--with-store",
        action="store_true",
        help="also time the Arrow batch through the store's own insert_finished (arrow-store)",
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the generated attribute values")
    args = parser.parse_args(argv)
    if args.spans < 1 or args.repeat < 1 or args.batch_size < 1 or args.executemany_spans < 1:
        parser.error("--spans, --repeat, --batch-size and --executemany-spans must be positive")

    print_environment(args)
    t0 = time.perf_counter()
    spans = generate_spans(args.spans, args.seed)
    # The spans live for the whole run, unlike in an application: keep the cyclic GC from walking them.
    gc.collect()
    gc.freeze()
    print(f"  generated           {len(spans):,} spans in {time.perf_counter() - t0:.1f} s (not timed)")
    batches = batched(spans, args.batch_size)
    small = batched(spans[: min(args.executemany_spans, len(spans))], args.batch_size)

    methods = [
        Method("arrow", run_arrow),
        Method("appender", run_appender),
        Method("executemany", run_executemany, subset=True),
    ]
    if args.with_store:
        methods.append(Method("arrow-store", run_arrow_store, informational=True))
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        for rep in range(args.repeat):
            order = methods[rep % len(methods) :] + methods[: rep % len(methods)]
            for method in order:
                path = Path(tmp) / f"{method.name}-{rep}.duckdb"
                work = small if method.subset else batches
                timing, n_spans, n_events = measure_once(method, work, path)
                expected = sum(len(b) for b in work)
                if n_spans != expected or n_events != expected:
                    problems.append(
                        f"{method.name}: {n_spans} spans / {n_events} events stored, expected {expected}"
                    )
                method.timings.append(timing)
            if rep == 0:
                reference = Path(tmp) / "arrow-0.duckdb"
                for method in methods[1:]:
                    problems += same_content(reference, Path(tmp) / f"{method.name}-0.duckdb", method.subset)
            print(
                f"  repetition {rep + 1}/{args.repeat}       done at {time.perf_counter() - t0:.1f} s",
                flush=True,
            )
            for path in Path(tmp).glob("*.duckdb*"):
                path.unlink()
    print_results(methods)
    print()
    if problems:
        print("CONTENT CHECK FAILED:")
        for problem in problems:
            print(f"  {problem}")
        return 1
    others = ", ".join(m.name for m in methods[1:])
    print(
        f"Content check: the {others} files hold exactly the rows of the arrow file (executemany: a prefix)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
