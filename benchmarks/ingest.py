"""How many spans per second does `DuckDBSpanExporter.export()` store, against the alternatives?

Run from the repository root:

    . .venv/bin/activate
    python benchmarks/ingest.py                    # 100,000 spans, median of 3; about a minute
    python benchmarks/ingest.py --spans 200000 --repeat 5

The same batches (512 finished spans from the real SDK, each with 10 attributes and 1 event; one in
twelve is a `workflow.execute` span and ten in twelve are `workflow.step.*` spans, like a pipeline)
go through, in this process, one after the other:

- `ours`: `DuckDBSpanExporter(TraceStore(file)).export(batch)` for every batch, then
  `force_flush()`: span objects to committed rows (conversion, raw tables, derived executions and
  steps), the way the BatchSpanProcessor's worker drives it.
- `ours-process`: the same with `TraceStore(file, writer_process=True)`: this process converts and
  hands the rows over, a child process runs DuckDB (its CPU is printed apart, counted once the store
  has closed and the child ended). The child is started and ready before the timer starts.
- `ours+busy-app`, `ours-process+busy-app`: the same two while another thread of this process runs
  Python the whole time (a service busy serving requests): the DuckDB client takes the GIL back many
  times per statement, and each time it waits up to the switch interval (5 ms) behind that thread.
  The busy thread's loops per second are printed beside those it makes alone (`busy-app alone`, one
  second per repetition): what storing the spans left the application.
- `otlp-encode`: the standard OTLP exporter's protobuf encoding of the same batches
  (`encode_spans(batch).SerializeToString()`), without sending: the work every OTLP user already pays.
- `sqlite-rows`: the same rows (`otel_workflow.ingest.convert` conversion) inserted into SQLite one `INSERT`
  per row, one transaction per batch (the old Go tracker's way), on a file.

Targets (issue 5): ours >= 100,000 spans/s, >= 4x otlp-encode, not slower than sqlite-rows.

Each method's process CPU time per second of wall time is printed too: how many of the machine's
cores it kept busy. For `ours`, 1.0 means the converter and writer threads took turns instead of
running side by side (see the README: the DuckDB client takes the GIL back several times per
statement, and waits for it while the converter holds it).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_workflow import DuckDBSpanExporter, TraceStore, WorkflowTracer
from otel_workflow.ingest.convert import SpanConverter

BATCH = 512


def make_spans(count: int) -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "orders"}), shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    wf = WorkflowTracer("orders", tracer_provider=provider)
    tracer = provider.get_tracer("bench")
    made = 0
    while made < count:
        with wf.execution(trigger_type="POST /orders", triggered_by="alice@example.com"):
            for step in range(10):
                with wf.step(f"step-{step}") as handle:
                    handle.span.set_attributes({f"attr.{k}": f"value-{k}-{made}" for k in range(7)})
                    handle.span.add_event("progress", {"done": step, "of": 10})
            with tracer.start_as_current_span("GET /inventory") as http:
                http.set_attributes({f"http.attr.{k}": k for k in range(10)})
                http.add_event("response", {"status": 200})
        made += 12
    spans = list(memory.get_finished_spans())[:count]
    provider.shutdown()
    return spans


def batches(spans: Sequence[ReadableSpan]) -> list[Sequence[ReadableSpan]]:
    return [spans[i : i + BATCH] for i in range(0, len(spans), BATCH)]


def new_store(folder: Path, *, writer_process: bool = False) -> TraceStore:
    store = TraceStore(
        folder / f"ours-{time.monotonic_ns()}.duckdb",
        max_queued_spans=10_000_000,
        writer_process=writer_process,
    )
    # The writer process imports DuckDB once, when the application starts: not part of the timing.
    assert store.wait_for_writer_process()
    return store


def run_ours(work: list[Sequence[ReadableSpan]], store: TraceStore) -> None:
    exporter = DuckDBSpanExporter(store)
    for batch in work:
        exporter.export(batch)
    assert exporter.force_flush(600_000)
    assert store.dropped_spans == 0
    store.close()


def run_otlp_encode(work: list[Sequence[ReadableSpan]], folder: Path) -> None:
    for batch in work:
        encode_spans(batch).SerializeToString()


def run_sqlite(work: list[Sequence[ReadableSpan]], folder: Path) -> None:
    converter = SpanConverter()
    connection = sqlite3.connect(folder / f"sqlite-{time.monotonic_ns()}.db")
    columns = [field.name for field in converter.finished(work[0]).spans.schema]
    connection.execute(f"CREATE TABLE spans ({', '.join(columns)}, PRIMARY KEY (trace_id, span_id))")
    connection.execute(
        "CREATE TABLE span_events (trace_id, span_id, event_index, name, timestamp, attributes)"
    )
    insert_span = f"INSERT OR REPLACE INTO spans VALUES ({', '.join('?' for _ in columns)})"
    for batch in work:
        tables = converter.finished(batch)
        with connection:
            for row in zip(*(column.to_pylist() for column in tables.spans.columns), strict=True):
                connection.execute(insert_span, row)
            for row in zip(*(column.to_pylist() for column in tables.events.columns), strict=True):
                connection.execute("INSERT INTO span_events VALUES (?, ?, ?, ?, ?, ?)", row)
    connection.close()


class BusyApplication:
    """A thread of the application that runs Python without a pause until the block ends; `rate` is its
    loops per second of wall time."""

    def __init__(self) -> None:
        self.loops = 0
        self.rate = 0.0
        self._started = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="busy-application")

    def _serve(self) -> None:
        total = 0
        while not self._stop.is_set():
            for number in range(1000):
                total += number * number
            self.loops += 1

    def __enter__(self) -> BusyApplication:
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.rate = self.loops / (time.perf_counter() - self._started)


# The busy thread's loops per second during each method that has one, and alone (per repetition).
APP_RATES: dict[str, list[float]] = {}


def with_busy_application(name: str) -> Callable[[list[Sequence[ReadableSpan]], TraceStore], None]:
    def run(work: list[Sequence[ReadableSpan]], store: TraceStore) -> None:
        with BusyApplication() as application:
            run_ours(work, store)
        APP_RATES.setdefault(name, []).append(application.rate)

    return run


def busy_application_alone() -> None:
    with BusyApplication() as application:
        time.sleep(1.0)
    APP_RATES.setdefault("busy-app alone", []).append(application.rate)


# What each method is handed, made before its timer starts: a folder, or a store ready to write.
PREPARE: dict[str, Callable[[Path], Any]] = {
    "ours": new_store,
    "ours-process": lambda folder: new_store(folder, writer_process=True),
    "ours+busy-app": new_store,
    "ours-process+busy-app": lambda folder: new_store(folder, writer_process=True),
    "otlp-encode": lambda folder: folder,
    "sqlite-rows": lambda folder: folder,
}
METHODS: dict[str, Callable[[list[Sequence[ReadableSpan]], Any], None]] = {
    "ours": run_ours,
    "ours-process": run_ours,
    "ours+busy-app": with_busy_application("ours+busy-app"),
    "ours-process+busy-app": with_busy_application("ours-process+busy-app"),
    "otlp-encode": run_otlp_encode,
    "sqlite-rows": run_sqlite,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spans", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(
        f"python {platform.python_version()}, opentelemetry-sdk {version('opentelemetry-sdk')}, "
        f"duckdb {version('duckdb')}, sqlite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs"
    )
    spans = make_spans(args.spans)
    work = batches(spans)
    # The generated spans live for the whole run; keep the cyclic GC from re-walking them in every method.
    gc.collect()
    gc.freeze()
    rates: dict[str, list[float]] = {name: [] for name in METHODS}
    cores: dict[str, list[float]] = {name: [] for name in METHODS}
    writer_cores: dict[str, list[float]] = {name: [] for name in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeat):
            busy_application_alone()
            names = list(METHODS)
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                prepared = PREPARE[name](Path(tmp))
                cpu = time.process_time()
                children = _children_cpu()
                start = time.perf_counter()
                METHODS[name](work, prepared)
                elapsed = time.perf_counter() - start
                rates[name].append(len(spans) / elapsed)
                cores[name].append((time.process_time() - cpu) / elapsed)
                writer_cores[name].append((_children_cpu() - children) / elapsed)
    median = {name: statistics.median(values) for name, values in rates.items()}
    print(f"\n{len(spans):,} spans in batches of {BATCH}, median of {args.repeat}")
    for name, rate in median.items():
        print(
            f"  {name:<22}{rate:>12,.0f} spans/s [{min(rates[name]):,.0f}-{max(rates[name]):,.0f}]   "
            f"{1e6 / rate:6.1f} us/span   "
            f"CPU per wall second {statistics.median(cores[name]):.2f}"
            + (
                f" + writer process {statistics.median(writer_cores[name]):.2f}"
                if name.startswith("ours-process")
                else ""
            )
        )
    # Each ratio of medians, then its range over the repetitions (each repetition runs every method once,
    # so a ratio within one repetition compares runs made side by side).
    for name, baseline, target in (
        ("ours", "otlp-encode", "  (target >= 4x)"),
        ("ours-process", "otlp-encode", ""),
        ("ours-process", "ours", ""),
        ("ours", "sqlite-rows", "  (target >= 1x)"),
        ("ours-process+busy-app", "ours+busy-app", ""),
    ):
        ratios = [a / b for a, b in zip(rates[name], rates[baseline], strict=True)]
        print(
            f"  {name} / {baseline}   {median[name] / median[baseline]:.2f}x  "
            f"[{min(ratios):.2f}x-{max(ratios):.2f}x]{target}"
        )
    alone = statistics.median(APP_RATES["busy-app alone"])
    print(f"  the busy application thread alone: {alone:,.0f} loops/s (median); while spans were stored:")
    for name in ("ours+busy-app", "ours-process+busy-app"):
        rate = statistics.median(APP_RATES[name])
        print(f"    {name:<22}{rate:>10,.0f} loops/s   {rate / alone:.2f}x of alone")


def _children_cpu() -> float:
    """CPU seconds of this process's ended children (the writer process, once its store closed)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
