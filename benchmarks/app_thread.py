"""What does tracing cost the application thread, per span?

Run from the repository root:

    . .venv/bin/activate
    python benchmarks/app_thread.py                 # about a minute on 2 vCPUs
    python benchmarks/app_thread.py --spans 50000 --repeat 5

For each setup below, N spans are created and ended on the application
thread(s) as fast as possible, and the wall time per span is measured there
(what the application pays, including the time background threads take the
GIL from it). Then the provider is shut down, outside the timing.

Setups, all on a fresh TracerProvider in this process:
- `sdk`: no span processor at all (the floor);
- `bsp-noop`: the SDK's BatchSpanProcessor with an exporter that does nothing (baseline b);
- `bsp-otlp`: BatchSpanProcessor(OTLPSpanExporter) to a receiver on 127.0.0.1 that runs in another
  process and answers 200 to everything (baseline c);
- `ours`: WorkflowSpanProcessor(store) + BatchSpanProcessor(DuckDBSpanExporter(store)) on a DuckDB
  file (the full setup);
- `processor`: WorkflowSpanProcessor() (enrichment only, no store) + `bsp-noop`: the processor's
  share of `ours`;
- `convert`: `processor`, with an exporter that converts each batch to Arrow rows as the store does
  (`otel_workflow.ingest.convert.SpanConverter`, in C) and discards them: the conversion's share, which holds
  the GIL. `ours` over `convert` is what storing the rows in DuckDB adds;
- `bsp-busy`: a control, the BatchSpanProcessor with an exporter that spends `--busy-us` (default
  15) microseconds of CPU per span with the GIL released (SHA-256 over a buffer: no Python object is
  touched), about what our writer spends per span. It shows what any exporter that does real work
  in the background costs the application thread on this machine, which `bsp-noop` cannot show.

Two workloads: plain spans with 2 attributes, and executions of 10 steps (WorkflowTracer), each with
1 and 8 application threads. Every figure is the median of `--repeat` runs, setups rotated per run.
The ratios printed are ours against `bsp-noop` (target: ours <= 1.10x) and against `bsp-otlp` (target:
ours < 1.0x). A second table gives the CPU time per span spent outside the application threads
(process CPU time of the run and the shutdown that flushes it, minus the application threads' own):
the background work each setup does, which is what competes with the application. A third gives
the time per span the garbage collector stopped every thread during the run (`gc.callbacks`): span
objects a setup keeps alive make its collections longer, and they run on the application thread.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import NamedTuple

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from otel_workflow import DuckDBSpanExporter, TraceStore, WorkflowSpanProcessor, WorkflowTracer
from otel_workflow.ingest.convert import SpanConverter

SETUPS = ("sdk", "bsp-noop", "bsp-otlp", "ours", "ours-process", "processor", "convert", "bsp-busy")

# The targets (ours against both baselines), then the split of ours against the no-op baseline: the
# processor, the processor and the conversion, and the control.
RATIOS = (
    ("ours", "bsp-noop"),
    ("ours", "bsp-otlp"),
    ("ours-process", "bsp-noop"),
    ("ours-process", "bsp-otlp"),
    ("processor", "bsp-noop"),
    ("convert", "bsp-noop"),
    ("bsp-busy", "bsp-noop"),
)

_RECEIVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


class GcPauses:
    """Wall time spent in garbage collections while it is installed (`gc.callbacks`), in seconds."""

    def __init__(self) -> None:
        self.total = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._started

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


class NoopExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class ConvertingExporter(SpanExporter):
    """Converts each batch to the store's Arrow rows and discards them (the `convert` setup)."""

    def __init__(self) -> None:
        self._converter = SpanConverter()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._converter.convert(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class BusyExporter(SpanExporter):
    """Spends `microseconds` of CPU per exported span with the GIL released (the `bsp-busy` control)."""

    _BUFFER = bytes(1 << 22)

    def __init__(self, microseconds: float) -> None:
        start = time.thread_time()
        for _ in range(8):
            hashlib.sha256(self._BUFFER).digest()
        bytes_per_second = 8 * len(self._BUFFER) / max(time.thread_time() - start, 1e-9)
        self._bytes_per_span = microseconds / 1e6 * bytes_per_second

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        remaining = int(len(spans) * self._bytes_per_span)
        view = memoryview(self._BUFFER)
        while remaining > 0:  # hashlib lets go of the GIL for inputs of 2 KiB and more
            chunk = min(remaining, len(view))
            hashlib.sha256(view[: max(chunk, 4096)]).digest()
            remaining -= chunk
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def start_receiver() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen([sys.executable, "-c", _RECEIVER], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    port = process.stdout.readline().strip()
    return process, f"http://127.0.0.1:{port}/v1/traces"


def make_provider(
    setup: str, folder: Path, otlp_endpoint: str, spans: int, busy_us: float = 15.0
) -> tuple[TracerProvider, TraceStore | None]:
    store = None
    provider = TracerProvider(shutdown_on_exit=False)
    # Queues that hold a whole run: with the SDK's default of 2,048, a batch processor whose worker falls
    # behind drops spans ("Queue full, dropping Span."), and a setup that drops looks cheaper than it is.
    queue = spans + 1
    if setup == "bsp-noop":
        provider.add_span_processor(BatchSpanProcessor(NoopExporter(), max_queue_size=queue))
    elif setup == "bsp-busy":
        provider.add_span_processor(BatchSpanProcessor(BusyExporter(busy_us), max_queue_size=queue))
    elif setup == "bsp-otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

        exporter = OTLPSpanExporter(endpoint=otlp_endpoint)
        provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=queue))
    elif setup in ("ours", "ours-process"):
        # Each execution and step span is queued twice (started, for its live row, and finished).
        store = TraceStore(
            folder / f"{time.monotonic_ns()}.duckdb",
            max_queued_spans=3 * queue,
            writer_process=setup == "ours-process",
        )
        if setup == "ours-process":
            # The writer process imports DuckDB once, at the application's start: not part of the run.
            store.wait_for_writer_process()
        provider.add_span_processor(WorkflowSpanProcessor(store))
        provider.add_span_processor(BatchSpanProcessor(DuckDBSpanExporter(store), max_queue_size=queue))
    elif setup == "processor":
        provider.add_span_processor(WorkflowSpanProcessor())
        provider.add_span_processor(BatchSpanProcessor(NoopExporter(), max_queue_size=queue))
    elif setup == "convert":
        provider.add_span_processor(WorkflowSpanProcessor())
        provider.add_span_processor(BatchSpanProcessor(ConvertingExporter(), max_queue_size=queue))
    return provider, store


def plain_spans(provider: TracerProvider, count: int) -> None:
    tracer = provider.get_tracer("bench")
    for i in range(count):
        with tracer.start_as_current_span("op", attributes={"i": i, "kind": "plain"}):
            pass


def executions(provider: TracerProvider, count: int) -> None:
    wf = WorkflowTracer("bench", tracer_provider=provider)
    for _ in range(count // 11):
        with wf.execution():
            for _ in range(10):
                with wf.step("step"):
                    pass


def run_once(
    setup: str,
    workload: Callable[[TracerProvider, int], None],
    *,
    spans: int,
    threads: int,
    folder: Path,
    otlp: str,
    busy_us: float = 15.0,
) -> tuple[float, float, float]:
    """Microseconds per span: application-thread wall time, CPU time outside those threads, and
    garbage-collection pauses during the run."""
    provider, store = make_provider(setup, folder, otlp, spans, busy_us)
    per_thread = spans // threads
    app_cpu: list[float] = []

    def timed() -> None:
        started = time.thread_time()
        workload(provider, per_thread)
        app_cpu.append(time.thread_time() - started)

    workers = [threading.Thread(target=timed) for _ in range(threads)]
    gc.collect()
    process_cpu = time.process_time()
    with GcPauses() as pauses:
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        elapsed = time.perf_counter() - start
    provider.shutdown()
    background = time.process_time() - process_cpu - sum(app_cpu)
    if store is not None and store.dropped_spans:
        print(f"  ({setup}: {store.dropped_spans:,} spans dropped; the figure is not comparable)")
    made = per_thread * threads
    return elapsed / made * 1e6, background / made * 1e6, pauses.total / made * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spans", type=int, default=22_000, help="spans per run (default 22,000)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--busy-us", type=float, default=15.0, help="CPU per span of the bsp-busy control (default 15)"
    )
    args = parser.parse_args()

    print(
        f"python {platform.python_version()}, opentelemetry-sdk {version('opentelemetry-sdk')}, "
        f"duckdb {version('duckdb')}, {os.cpu_count()} CPUs; {args.spans:,} spans per run, "
        f"median of {args.repeat}"
    )
    receiver, endpoint = start_receiver()
    rows: list[Row] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, workload in (("plain spans", plain_spans), ("executions x10 steps", executions)):
                for threads in (1, 8):
                    wall: dict[str, list[float]] = {s: [] for s in SETUPS}
                    background: dict[str, list[float]] = {s: [] for s in SETUPS}
                    collecting: dict[str, list[float]] = {s: [] for s in SETUPS}
                    for rep in range(args.repeat):
                        for setup in SETUPS[rep % len(SETUPS) :] + SETUPS[: rep % len(SETUPS)]:
                            per_span, behind, paused = run_once(
                                setup,
                                workload,
                                spans=args.spans,
                                threads=threads,
                                folder=Path(tmp),
                                otlp=endpoint,
                                busy_us=args.busy_us,
                            )
                            wall[setup].append(per_span)
                            background[setup].append(behind)
                            collecting[setup].append(paused)
                    rows.append(
                        Row(
                            name,
                            threads,
                            {s: statistics.median(v) for s, v in wall.items()},
                            {s: statistics.median(v) for s, v in background.items()},
                            {s: statistics.median(v) for s, v in collecting.items()},
                        )
                    )
                    print_row(name, threads, rows[-1].wall)
    finally:
        receiver.terminate()
        receiver.wait()
    for title, column in (
        ("CPU per span outside the application threads (background work)", "background"),
        ("garbage-collection pauses per span during the run (all threads wait)", "collecting"),
    ):
        print(f"\n{title}:")
        print(f"{'workload':<22}{'threads':>8}" + "".join(f"{s:>16}" for s in SETUPS))
        for row in rows:
            figures = getattr(row, column)
            print(f"{row.name:<22}{row.threads:>8}" + "".join(f"{figures[s]:>13.1f} us" for s in SETUPS))


class Row(NamedTuple):
    """Medians per setup of one workload and thread count, in microseconds per span."""

    name: str
    threads: int
    wall: dict[str, float]
    background: dict[str, float]
    collecting: dict[str, float]


def print_row(name: str, threads: int, med: dict[str, float]) -> None:
    if name == "plain spans" and threads == 1:
        print(
            f"\n{'workload':<22}{'threads':>8}"
            + "".join(f"{s:>16}" for s in SETUPS)
            + "".join(f"{numerator + '/' + denominator:>19}" for numerator, denominator in RATIOS)
        )
    print(
        f"{name:<22}{threads:>8}"
        + "".join(f"{med[s]:>13.1f} us" for s in SETUPS)
        + "".join(f"{med[numerator] / med[denominator]:>18.2f}x" for numerator, denominator in RATIOS)
    )


if __name__ == "__main__":
    main()
