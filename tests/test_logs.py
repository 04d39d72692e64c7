"""Application logs: Python `logging` through `configure()` (or a setup of one's own) into `log_records`,
and beside their steps in `execution_logs`; redaction, hostile records, drops, the CLI.

Real SDK, real DuckDB files, a real OTLP/HTTP endpoint on 127.0.0.1 for `otlp=True`.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import resource
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pytest
from capture_support import OtlpReceiver
from click.testing import CliRunner
from opentelemetry.sdk._logs import LoggerProvider, LogRecordProcessor, ReadWriteLogRecord
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from otel_workflow import (
    DuckDBLogExporter,
    TraceStore,
    WorkflowLogHandler,
    WorkflowSpanProcessor,
    WorkflowTelemetry,
    WorkflowTracer,
    configure,
)
from otel_workflow.cli.commands import main
from otel_workflow.ingest.logrows import MAX_TEXT_CHARS
from otel_workflow.instrument.capture.redaction import REDACTED
from otel_workflow.sdk.logs import DuckDBLogRecordProcessor
from otel_workflow.storage.schema import SCHEMA_VERSION, VERSION_TABLE

SECRET = "hunter2-secret-9f3c"


@pytest.fixture
def telemetry(tmp_path: Path) -> Iterator[WorkflowTelemetry]:
    setup = configure(tmp_path / "logs.duckdb", service_name="shop")
    yield setup
    setup.shutdown()


def _sync(setup: WorkflowTelemetry) -> None:
    assert setup.tracer_provider.force_flush()
    assert setup.logger_provider is not None and setup.logger_provider.force_flush()
    assert setup.store.flush(30)


def _workflow(setup: WorkflowTelemetry) -> WorkflowTracer:
    return WorkflowTracer("orders", tracer_provider=setup.tracer_provider)


def _app_rows(setup: WorkflowTelemetry, execution_id: str) -> list[Any]:
    return [row for row in setup.store.logs(execution_id) if row.id.startswith("log:")]


# -- a record inside a step ----------------------------------------------------------------------------


def test_a_warning_inside_a_step_is_a_log_row_of_that_step(telemetry: WorkflowTelemetry) -> None:
    wf = _workflow(telemetry)
    shop = logging.getLogger("shop")
    with wf.execution(trigger_type="cron") as run:
        with wf.step("validate"):
            pass
        with wf.step("reserve"):
            shop.warning("low stock for %s", "sku-42", extra={"sku": "sku-42", "quantity": 3})
    _sync(telemetry)
    rows = telemetry.store.logs(run.execution_id)
    [row] = [row for row in rows if row.id.startswith("log:")]
    reserve = next(step for step in telemetry.store.steps(run.execution_id) if step.step_name == "reserve")
    assert (row.execution_id, row.step_id, row.module_name) == (run.execution_id, reserve.id, "reserve")
    assert (row.level, row.message) == ("warning", "low stock for sku-42")
    assert row.fields["logger"] == "shop"
    assert row.fields["sku"] == "sku-42" and row.fields["quantity"] == 3
    assert row.fields["code.function.name"] == "test_a_warning_inside_a_step_is_a_log_row_of_that_step"
    assert row.fields["code.file.path"].endswith("test_logs.py") and row.fields["code.line.number"] > 0
    # In time order among the span-derived rows: after the step's start, before its end.
    messages = [r.message for r in rows]
    at = messages.index("low stock for sku-42")
    assert messages[at - 1] == "Step started: reserve"
    assert messages[at + 1].startswith("Step completed: reserve")
    # `step_name` keeps that step's rows.
    validate = [r.message for r in telemetry.store.logs(run.execution_id, step_name="validate")]
    assert validate[0] == "Step started: validate" and "low stock for sku-42" not in validate
    reserved = [r.message for r in telemetry.store.logs(run.execution_id, step_name="reserve")]
    assert "low stock for sku-42" in reserved
    [raw] = telemetry.store.sql(
        "SELECT severity_number, severity_text, service_name, scope_name, trace_id IS NOT NULL "
        "FROM log_records"
    )
    assert raw == (13, "WARN", "shop", "shop", True)


def test_an_exception_logged_in_a_step_has_its_type_message_and_stack(telemetry: WorkflowTelemetry) -> None:
    wf = _workflow(telemetry)
    with wf.execution(trigger_type="cron") as run, wf.step("charge"):
        try:
            raise ConnectionError("payment gateway down")
        except ConnectionError:
            logging.getLogger("shop.payments").exception("charge failed for order %d", 7)
    _sync(telemetry)
    [row] = _app_rows(telemetry, run.execution_id)
    assert (row.level, row.message) == ("error", "charge failed for order 7")
    assert row.fields["exception.type"] == "ConnectionError"
    assert row.fields["exception.message"] == "payment gateway down"
    assert "Traceback" in row.fields["exception.stacktrace"]
    assert "ConnectionError: payment gateway down" in row.fields["exception.stacktrace"]


def test_records_outside_any_run_stay_in_log_records_only(telemetry: WorkflowTelemetry) -> None:
    logging.getLogger("shop").warning("service started")
    _sync(telemetry)
    assert telemetry.store.sql("SELECT body::VARCHAR, trace_id FROM log_records") == [
        ('"service started"', None)
    ]
    assert telemetry.store.sql("SELECT count(*) FROM execution_logs") == [(0,)]


def test_a_record_of_a_running_step_joins_it_before_and_after_the_step_ends(
    telemetry: WorkflowTelemetry,
) -> None:
    wf = _workflow(telemetry)
    with wf.execution(trigger_type="cron") as run, wf.step("slow"):
        logging.getLogger("shop").warning("still working")
        _sync(telemetry)  # the record is stored, its step span is only a live row
        [live] = _app_rows(telemetry, run.execution_id)
        assert (live.module_name, live.message) == ("slow", "still working")
    _sync(telemetry)
    [ended] = _app_rows(telemetry, run.execution_id)
    assert (ended.id, ended.step_id) == (live.id, live.step_id)


# -- redaction, hostile records ------------------------------------------------------------------------


def test_secrets_in_extra_and_in_the_message_never_reach_the_file(telemetry: WorkflowTelemetry) -> None:
    wf = _workflow(telemetry)
    with wf.execution(trigger_type="cron") as run, wf.step("login"):
        logging.getLogger("shop").warning(
            "calling upstream with Authorization: Bearer %s and card 4111 1111 1111 1111",
            "abcDEF123456789xyz",
            extra={"password": SECRET, "user": "ada", "headers": {"x-api-key": SECRET}},
        )
    _sync(telemetry)
    [row] = _app_rows(telemetry, run.execution_id)
    assert row.fields["password"] == REDACTED and row.fields["headers"] == {"x-api-key": REDACTED}
    assert row.fields["user"] == "ada"
    assert row.message == f"calling upstream with Authorization: Bearer {REDACTED} and card {REDACTED}"
    dumped = telemetry.store.sql("SELECT body::VARCHAR || attributes::VARCHAR FROM log_records")
    assert SECRET not in str(dumped) and "abcDEF123456789xyz" not in str(dumped)


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for you")

    __repr__ = __str__


@pytest.fixture
def hostile_logger(telemetry: WorkflowTelemetry) -> logging.Logger:
    """A logger outside the logging tree with only our handler: pytest puts its capture handlers on every
    logger of the tree, and they re-raise what these records do to a formatter."""
    hostile = logging.Logger("shop.hostile")
    assert telemetry.log_handler is not None
    hostile.addHandler(telemetry.log_handler)
    return hostile


def test_hostile_records_never_raise_and_are_all_stored(
    telemetry: WorkflowTelemetry, hostile_logger: logging.Logger
) -> None:
    shop = hostile_logger
    huge = "x" * (MAX_TEXT_CHARS * 4)
    emitted = [
        lambda: shop.warning("%s %s", "only one argument"),
        lambda: shop.warning("%d", "not a number"),
        lambda: shop.warning("value: %s", _Unprintable()),
        lambda: shop.warning(_Unprintable()),
        lambda: shop.warning(huge),
        lambda: shop.warning(b"\xff\xfe binary \x00 bytes"),
        lambda: shop.warning("lone surrogate \udcff here"),
        lambda: shop.warning({"a": "dict", "as": "the message"}),
        lambda: shop.warning("extra that cannot print", extra={"thing": _Unprintable()}),
        lambda: shop.warning("<script>alert(1)</script>"),
    ]
    for emit in emitted:
        emit()  # none of them raises into the application
    _sync(telemetry)
    bodies = [row[0] for row in telemetry.store.sql("SELECT body ->> '$' FROM log_records ORDER BY time")]
    assert len(bodies) == len(emitted)
    assert "could not be formatted" in bodies[0] and "could not be formatted" in bodies[1]
    assert "unprintable" in bodies[3]
    assert len(bodies[4]) < MAX_TEXT_CHARS + 100 and "characters cut" in bodies[4]
    assert "binary" in bodies[5] and "lone surrogate" in bodies[6]
    assert bodies[9] == "<script>alert(1)</script>"  # text, stored as it is


def test_our_own_and_opentelemetrys_loggers_are_not_exported(telemetry: WorkflowTelemetry) -> None:
    logging.getLogger("otel_workflow").warning("a warning of ours")
    logging.getLogger("opentelemetry.sdk._shared_internal").warning("Queue full, dropping")
    logging.getLogger("shop").warning("the application's")
    _sync(telemetry)
    assert telemetry.store.sql("SELECT body ->> '$' FROM log_records") == [("the application's",)]


# -- setups of one's own, OTLP -------------------------------------------------------------------------


def test_a_setup_of_ones_own_with_the_batch_processor_and_the_exporter(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "own.duckdb")
    provider = LoggerProvider(resource=Resource.create({"service.name": "billing"}), shutdown_on_exit=False)
    provider.add_log_record_processor(
        BatchLogRecordProcessor(DuckDBLogExporter(store), schedule_delay_millis=50)
    )
    handler = WorkflowLogHandler(logger_provider=provider)
    billing = logging.getLogger("billing")
    billing.addHandler(handler)
    billing.propagate = False
    billing.setLevel(logging.INFO)  # the logger's own level comes first, as always with `logging`
    try:
        for number in range(25):
            billing.info("invoice %d sent", number)
        assert provider.force_flush()
        assert store.flush(30)
        assert store.sql("SELECT count(*), min(service_name), min(severity_number) FROM log_records") == [
            (25, "billing", 9)
        ]
    finally:
        billing.removeHandler(handler)
        billing.propagate = True
        billing.setLevel(logging.NOTSET)
        provider.shutdown()
        store.close()


def test_configure_with_otlp_also_sends_the_records_redacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        setup = configure(tmp_path / "otlp.duckdb", service_name="shop", otlp=True)
        try:
            logging.getLogger("shop").warning("to both", extra={"password": SECRET})
            _sync(setup)
        finally:
            setup.shutdown()
    [record] = receiver.log_records()
    assert record.body.string_value == "to both"
    attributes = {pair.key: pair.value.string_value for pair in record.attributes}
    assert attributes["password"] == REDACTED
    assert SECRET not in str(receiver.log_requests())


# -- the queue -----------------------------------------------------------------------------------------


def test_records_past_the_queue_bound_are_dropped_and_counted(tmp_path: Path) -> None:
    collected: list[ReadWriteLogRecord] = []
    provider = LoggerProvider(shutdown_on_exit=False)

    class Collect(DuckDBLogRecordProcessor):
        def on_emit(self, log_record: ReadWriteLogRecord) -> None:
            collected.append(log_record)

    store = TraceStore(tmp_path / "bounded.duckdb", max_queued_logs=10)
    provider.add_log_record_processor(Collect(store))
    logger = provider.get_logger("shop")
    handler = WorkflowLogHandler(logger_provider=provider)
    for number in range(100):
        handler.handle(logging.LogRecord("shop", logging.INFO, __file__, 1, "record %d", (number,), None))
    assert len(collected) == 100 and logger is not None
    try:
        assert store.submit_log_records(collected) is False  # one call: ten taken, ninety dropped
        assert store.flush(30)
        assert store.dropped_logs == 90 and store.dropped_logs_by_reason["queue_full"] == 90
        assert store.sql("SELECT count(*) FROM log_records") == [(10,)]
        assert store.dropped_spans == 0  # log drops are their own
    finally:
        store.close()
        provider.shutdown()
    # After the close: counted as dropped at shutdown, never raised.
    assert store.submit_log_records(collected[:5]) is False
    assert store.dropped_logs_by_reason["shutdown"] == 5


@pytest.mark.slow
def test_a_logging_storm_leaves_the_host_responsive_and_counts_every_record(tmp_path: Path) -> None:
    setup = configure(tmp_path / "storm.duckdb", service_name="storm")
    storm = logging.getLogger("storm")
    threads, per_thread = 8, 12_500
    gaps: list[float] = []
    stop = threading.Event()

    def heartbeat() -> None:  # the host's own work: how long does it wait for the GIL at most?
        last = time.perf_counter()
        while not stop.is_set():
            time.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    def emit() -> None:
        for number in range(per_thread):
            storm.warning("storm record %d", number)

    gc.collect()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    beat = threading.Thread(target=heartbeat)
    beat.start()
    workers = [threading.Thread(target=emit) for _ in range(threads)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        _sync(setup)
    finally:
        stop.set()
        beat.join()
    stored = setup.store.sql("SELECT count(*) FROM log_records")[0][0]
    dropped = setup.store.dropped_logs
    rss_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    setup.shutdown()
    print(
        f"\nstorm: {threads * per_thread} records, {stored} stored, {dropped} dropped, "
        f"longest heartbeat gap {max(gaps) * 1000:.0f} ms, max RSS growth {rss_growth_mb:.0f} MB"
    )
    assert stored + dropped == threads * per_thread
    assert rss_growth_mb < 400  # the queue is bounded: memory does not grow with the storm
    assert max(gaps) < 5.0  # responsive: not a timing benchmark, a check that nothing blocks for good


# -- schema, CLI ---------------------------------------------------------------------------------------


def test_a_version_1_file_gets_log_records_when_a_writer_opens_it(tmp_path: Path) -> None:
    path = tmp_path / "v1.duckdb"
    TraceStore(path).close()
    with duckdb.connect(str(path)) as connection:  # back to version 1: no log_records, the old rows
        connection.execute("DROP VIEW execution_logs")
        connection.execute("DROP TABLE log_records")
        connection.execute(f"DELETE FROM {VERSION_TABLE}")
        connection.execute(f"INSERT INTO {VERSION_TABLE} VALUES (1, now())")
    with TraceStore(path) as store:
        assert store.sql(f"SELECT max(version) FROM {VERSION_TABLE}") == [(SCHEMA_VERSION,)]
        assert store.sql("SELECT count(*) FROM log_records") == [(0,)]
        assert store.sql("SELECT count(*) FROM execution_logs") == [(0,)]


def test_the_logs_command_shows_application_records_by_step(telemetry: WorkflowTelemetry) -> None:
    wf = _workflow(telemetry)
    with wf.execution(trigger_type="cron") as run:
        with wf.step("fetch"):
            logging.getLogger("shop").info("fetched 3 rows")
            logging.getLogger("shop").warning("one row was late")
        with wf.step("store"):
            logging.getLogger("shop").error("disk almost full")
    _sync(telemetry)
    telemetry.store.close_writer()
    runner = CliRunner()
    db = str(telemetry.store.path)
    shown = runner.invoke(main, ["logs", run.execution_id[:8], "--db", db, "--step", "fetch", "--json"])
    assert shown.exit_code == 0, shown.output
    messages = [row["message"] for row in json.loads(shown.output)]
    assert "one row was late" in messages and "disk almost full" not in messages
    assert "fetched 3 rows" not in messages  # INFO is below the root logger's level (WARNING)
    level = runner.invoke(main, ["logs", run.execution_id, "--db", db, "--level", "error", "--json"])
    assert [row["message"] for row in json.loads(level.output)] == ["disk almost full"]
    followed = runner.invoke(main, ["logs", run.execution_id, "--db", db, "--follow"])
    assert followed.exit_code == 0, followed.output  # an ended execution: printed once, then done
    assert "disk almost full" in followed.output and "one row was late" in followed.output
    assert os.path.exists(db)


def test_spans_and_log_records_written_in_one_transaction(tmp_path: Path) -> None:
    # A long write interval: the spans and the records wait for the same write cycle.
    store = TraceStore(tmp_path / "together.duckdb", flush_interval_s=5.0)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(WorkflowSpanProcessor(store))
    spans = _Spans()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    logs = LoggerProvider(shutdown_on_exit=False)
    records = _Records()
    logs.add_log_record_processor(records)
    handler = WorkflowLogHandler(logger_provider=logs)
    wf = WorkflowTracer("orders", tracer_provider=provider)
    with wf.execution(trigger_type="cron") as run, wf.step("pack"):
        handler.handle(logging.LogRecord("shop", logging.WARNING, __file__, 1, "packed", (), None))
    try:
        assert store.submit_spans(spans.finished) and store.submit_log_records(records.emitted)
        assert store.flush(30)
        assert (store.dropped_spans, store.dropped_logs) == (0, 0)
        stored = [row.message for row in store.logs(run.execution_id) if row.id.startswith("log:")]
        assert stored == ["packed"]
    finally:
        store.close()
        provider.shutdown()
        logs.shutdown()


class _Spans(SpanExporter):
    def __init__(self) -> None:
        self.finished: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.finished.extend(spans)
        return SpanExportResult.SUCCESS


class _Records(LogRecordProcessor):
    def __init__(self) -> None:
        self.emitted: list[ReadWriteLogRecord] = []

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        self.emitted.append(log_record)

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True
