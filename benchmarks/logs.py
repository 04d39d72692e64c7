"""What does a `logger.info` call cost the application, and how fast do records go into DuckDB?

Run from the repository root:

    . .venv/bin/activate
    python benchmarks/logs.py                       # about half a minute on 2 vCPUs
    python benchmarks/logs.py --records 100000 --repeat 5

Application thread, per `logger.info("order %s shipped", n, extra={...})` call, wall time measured
on the calling thread (what the application pays, including the time background threads take the
GIL from it), each setup on a logger of its own:
- `stdlib-file`: the standard library's `FileHandler` writing formatted lines to a file (baseline);
- `ours`: what `configure()` sets up: `WorkflowLogHandler` -> `LoggerProvider` ->
  `DuckDBLogRecordProcessor` into a DuckDB file (the record is translated and redacted on the
  application thread, made into a row on the writer's converter thread, written by the writer);
- `handler-only`: `WorkflowLogHandler` -> `LoggerProvider` with a processor that drops the record:
  the share of the translation and the SDK's `Logger.emit`.
The time to drain what is queued after the last call (`flush`) is reported apart, as are the
records stored and dropped (their sum must equal the calls: the script exits 1 otherwise).

Ingest: the SDK's records built beforehand, handed to a store in batches of 512 as fast as it
takes them (`submit_log_records`, what the processor and `DuckDBLogExporter` call), timed until
`flush()` returns: stored records per second. Every figure is the median of `--repeat` runs.
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from opentelemetry.sdk._logs import LoggerProvider, LogRecordProcessor, ReadWriteLogRecord

from otel_workflow import TraceStore, WorkflowLogHandler
from otel_workflow.sdk.logs import DuckDBLogRecordProcessor

_EXTRA = {"order.id": "o-123", "customer.tier": "gold"}


class _Drop(LogRecordProcessor):
    """A processor that does nothing with the record (the cost up to the processor)."""

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        return None

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class _Collect(LogRecordProcessor):
    def __init__(self) -> None:
        self.records: list[ReadWriteLogRecord] = []

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        self.records.append(log_record)

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    # Outside the logging tree: no other handler (root's) takes part in the timing.
    logger = logging.Logger(name, logging.INFO)
    logger.addHandler(handler)
    return logger


def _calls(logger: logging.Logger, records: int) -> float:
    """Seconds per call on this thread."""
    start = time.perf_counter()
    for number in range(records):
        logger.info("order %s shipped", number, extra=_EXTRA)
    return (time.perf_counter() - start) / records


def stdlib_file(folder: Path, records: int) -> dict[str, float]:
    handler = logging.FileHandler(folder / "app.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    per_call = _calls(_logger("bench.file", handler), records)
    start = time.perf_counter()
    handler.close()
    return {"per_call": per_call, "drain": time.perf_counter() - start}


def ours(folder: Path, records: int) -> dict[str, float]:
    store = TraceStore(folder / f"logs-{time.monotonic_ns()}.duckdb", max_queued_logs=max(20_000, records))
    provider = LoggerProvider(shutdown_on_exit=False)
    provider.add_log_record_processor(DuckDBLogRecordProcessor(store))
    per_call = _calls(_logger("bench.ours", WorkflowLogHandler(logger_provider=provider)), records)
    start = time.perf_counter()
    if not store.flush(120):
        raise SystemExit("the store did not flush within 120 s")
    drain = time.perf_counter() - start
    stored = store.sql("SELECT count(*) FROM log_records")[0][0]
    dropped = store.dropped_logs
    provider.shutdown()
    store.close()
    if stored + dropped != records:
        raise SystemExit(f"records lost: {records} logged, {stored} stored, {dropped} dropped")
    return {"per_call": per_call, "drain": drain, "stored": stored, "dropped": dropped}


def handler_only(folder: Path, records: int) -> dict[str, float]:
    provider = LoggerProvider(shutdown_on_exit=False)
    provider.add_log_record_processor(_Drop())
    per_call = _calls(_logger("bench.handler", WorkflowLogHandler(logger_provider=provider)), records)
    provider.shutdown()
    return {"per_call": per_call, "drain": 0.0}


def ingest(folder: Path, records: int) -> dict[str, float]:
    collect = _Collect()
    provider = LoggerProvider(shutdown_on_exit=False)
    provider.add_log_record_processor(collect)
    _calls(_logger("bench.ingest", WorkflowLogHandler(logger_provider=provider)), records)
    provider.shutdown()
    store = TraceStore(folder / f"ingest-{time.monotonic_ns()}.duckdb", max_queued_logs=records)
    start = time.perf_counter()
    for first in range(0, records, 512):
        store.submit_log_records(collect.records[first : first + 512])
    if not store.flush(120):
        raise SystemExit("the store did not flush within 120 s")
    elapsed = time.perf_counter() - start
    stored = store.sql("SELECT count(*) FROM log_records")[0][0]
    store.close()
    if stored != records:
        raise SystemExit(f"ingest stored {stored} of {records} records")
    return {"per_second": records / elapsed}


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=50_000, help="records per run (default 50,000)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(
        f"python {platform.python_version()}, opentelemetry-sdk {version('opentelemetry-sdk')}, "
        f"duckdb {version('duckdb')}; {args.records:,} records per run, median of {args.repeat}"
    )
    setups: dict[str, Callable[[Path, int], dict[str, float]]] = {
        "stdlib-file": stdlib_file,
        "handler-only": handler_only,
        "ours": ours,
    }
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in setups}
    rates: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for _ in range(args.repeat):
            for name, setup in setups.items():  # the same order each run; each on a logger of its own
                results[name].append(setup(folder, args.records))
            rates.append(ingest(folder, args.records))
    base = median(results["stdlib-file"], "per_call")
    print(f"\n  {'setup':<14}{'per call':>12}{'vs stdlib-file':>16}{'drain after':>14}")
    for name, runs in results.items():
        per_call = median(runs, "per_call")
        drain_ms = median(runs, "drain") * 1000
        print(f"  {name:<14}{per_call * 1e6:>9.2f} us{per_call / base:>15.2f}x{drain_ms:>11.0f} ms")
    stored, dropped = median(results["ours"], "stored"), median(results["ours"], "dropped")
    print(f"\n  ours: {stored:,.0f} stored, {dropped:,.0f} dropped per run (stored + dropped = logged)")
    print(f"  ingest into DuckDB: {median(rates, 'per_second'):,.0f} records/s")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
