"""OTLP/gRPC into `otel-workflow serve`: the real Python gRPC exporters in other processes, beside HTTP
clients; hostile calls (garbage, truncated, oversized, gzip bombs, stream floods) answered with an error
status while the server keeps serving; back-pressure with retry info; SIGTERM loses no acknowledged span."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import httpx
import pytest
from collector_support import Served, assert_same_rows, pipeline_spans, protobuf_body, run_pipeline, served
from conftest import make_traced
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from reliability_support import lock_held

from otel_workflow import TraceStore
from otel_workflow.server.app import ReceiverLimits

TRACES_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
LOGS_METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
RETRYABLE = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Served]:
    with served(tmp_path / "collector.duckdb", grpc=True) as server:
        yield server


def raw_stub(address: str, method: str = TRACES_METHOD, **options: Any) -> grpc.UnaryUnaryMultiCallable:
    """A call of `method` that sends and returns bytes as they are (no message classes)."""
    channel = grpc.insecure_channel(address, **options)
    return channel.unary_unary(method)


def count(store: TraceStore, query: str) -> Any:
    return store.sql(query)[0][0]


def retry_delay_s(error: grpc.RpcError) -> float:
    """The RetryInfo of an error, as both places carry it: the status details and the Python SDK's trailer."""
    trailers = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    details = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert details.code == error.code().value[0]  # type: ignore[attr-defined]
    info = error_details_pb2.RetryInfo()
    assert details.details[0].Unpack(info)
    assert error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"]) == info
    return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)


# -- the real exporters, in other processes, beside HTTP -------------------------------------------

# Another service exporting spans and logs of runs over gRPC (argv: address, mode "grpc" or "http").
SENDER = textwrap.dedent(
    """
    import json, logging, sys
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from otel_workflow import WorkflowLogHandler, WorkflowSpanProcessor, WorkflowTracer

    address, mode, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "grpc":
        from grpc import Compression
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        spans = OTLPSpanExporter(endpoint=address, insecure=True, compression=Compression.Gzip)
        logs = OTLPLogExporter(endpoint=address, insecure=True)
    else:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        spans = OTLPSpanExporter(endpoint=address + "/v1/traces")
        logs = OTLPLogExporter(endpoint=address + "/v1/logs")
    resource = Resource.create({"service.name": f"{mode}-svc"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(WorkflowSpanProcessor())
    tracer_provider.add_span_processor(BatchSpanProcessor(spans, schedule_delay_millis=20))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(logs, schedule_delay_millis=20))
    log = logging.Logger("billing")  # outside the logging tree: only the OpenTelemetry handler
    log.addHandler(WorkflowLogHandler(logger_provider=logger_provider))
    wf = WorkflowTracer(f"invoicing-{mode}", tracer_provider=tracer_provider)
    ids = []
    for number in range(runs):
        with wf.execution(trigger_type="queue") as run:
            for step in ("load", "render-pdf", "send"):
                with wf.step(step):
                    log.warning("run %d at %s", number, step)
        ids.append(run.execution_id)
    logger_provider.shutdown()
    tracer_provider.shutdown()
    print(json.dumps(ids))
    """
)


def test_grpc_and_http_exporters_in_other_processes_store_every_span_and_log(collector: Served) -> None:
    runs = 40
    senders = [
        subprocess.Popen(
            [sys.executable, "-c", SENDER, address, mode, str(runs)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for mode, address in (
            ("grpc", collector.grpc_address),
            ("http", collector.url),
            ("grpc", collector.grpc_address),
        )
    ]
    ids: list[str] = []
    for sender in senders:
        out, err = sender.communicate(timeout=120)
        assert sender.returncode == 0, err
        assert "Failed to export" not in err and "Transient error" not in err, err
        ids += json.loads(out.strip().splitlines()[-1])
    assert collector.store.flush(30)
    store = collector.store
    assert sorted(row[0] for row in store.sql("SELECT id FROM workflow_executions")) == sorted(ids)
    assert count(store, "SELECT count(*) FROM spans") == 3 * runs * 4
    assert count(store, "SELECT count(*) FROM log_records") == 3 * runs * 3
    # Each log line joined its step, whichever transport its spans and records came by.
    assert count(
        store, "SELECT count(*) FROM execution_logs WHERE id LIKE 'log:%' AND step_id IS NOT NULL"
    ) == (3 * runs * 3)
    status = httpx.get(collector.url + "/api/status", timeout=30).json()
    assert status["accepted_spans"] == 3 * runs * 4 and status["accepted_log_records"] == 3 * runs * 3
    assert 0 < status["grpc_requests"] < status["requests"]
    assert status["refused"] == {"busy": 0, "saturated": 0, "invalid": 0}


def test_the_grpc_exporter_gives_the_rows_of_the_in_process_exporter(
    tmp_path: Path, collector: Served
) -> None:
    traced = make_traced(tmp_path / "in-process.duckdb")
    exporter = OTLPSpanExporter(endpoint=collector.grpc_address, insecure=True)
    traced.provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=50))
    try:
        run_pipeline(traced.provider, runs=3)
        traced.provider.shutdown()
        assert collector.store.flush(30)
        assert_same_rows(traced.store, collector.store)
    finally:
        traced.store.close()


def test_spans_with_invalid_ids_are_a_partial_success(collector: Served) -> None:
    request = encode_spans(pipeline_spans())
    spans = request.resource_spans[0].scope_spans[0].spans
    spans[0].span_id = b"\x00" * 8
    spans[1].trace_id = b"short"
    answer = ExportTraceServiceResponse.FromString(
        raw_stub(collector.grpc_address)(request.SerializeToString())
    )
    assert answer.partial_success.rejected_spans == 2
    assert "span_id" in answer.partial_success.error_message
    assert collector.store.flush(30)
    total = sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)
    assert count(collector.store, "SELECT count(*) FROM spans") == total - 2


# -- hostile calls ----------------------------------------------------------------------------------


class RawCall:
    """One gRPC call written as HTTP/2 frames by hand: what a grpc client would never send."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.host, self.port = host, int(port)

    def send(
        self, payload: bytes, *, compressed: bool = False, declared: int | None = None
    ) -> dict[str, str]:
        """Send one length-prefixed message (its length `declared` if given); the answer's headers and
        trailers (`grpc-status`, `grpc-message`), or `reset` if the stream was reset."""
        connection = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        with socket.create_connection((self.host, self.port), timeout=20) as sock:
            connection.initiate_connection()
            headers = [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", TRACES_METHOD),
                (":authority", f"{self.host}:{self.port}"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ]
            if compressed:
                headers.append(("grpc-encoding", "gzip"))
            connection.send_headers(1, headers)
            frame = (
                struct.pack(">BI", int(compressed), len(payload) if declared is None else declared) + payload
            )
            answer: dict[str, str] = {}
            sent, ended = 0, False
            while not ended:
                while sent < len(frame) and connection.local_flow_control_window(1) > 0:
                    size = min(connection.local_flow_control_window(1), connection.max_outbound_frame_size)
                    chunk = frame[sent : sent + size]
                    sent += len(chunk)
                    connection.send_data(1, chunk, end_stream=sent == len(frame))
                sock.sendall(connection.data_to_send())
                data = sock.recv(65536)
                if not data:
                    break
                for event in connection.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        answer.update(dict(event.headers))  # type: ignore[arg-type]
                    elif isinstance(event, h2.events.StreamReset):
                        answer["reset"] = str(event.error_code)
                        ended = True
                    elif isinstance(event, h2.events.StreamEnded):
                        ended = True
                sock.sendall(connection.data_to_send())
            return answer


def _gzip_bomb(size: int) -> bytes:
    """`size` zero bytes, gzip-compressed (about a thousandth of their size)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b"\x00" * (1 << 20)
    return b"".join(compressor.compress(chunk) for _ in range(size >> 20)) + compressor.flush()


SMALL = ReceiverLimits(max_body_bytes=256 * 1024, max_decompressed_bytes=1024 * 1024)


@pytest.fixture(scope="module")
def small_collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with served(tmp_path_factory.mktemp("grpc") / "c.duckdb", limits=SMALL, grpc=True) as server:
        yield server


def _valid_body() -> bytes:
    return protobuf_body(pipeline_spans())


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("garbage", "3"),  # INVALID_ARGUMENT
        ("truncated message", "3"),
        ("declared longer than sent", None),  # grpc ends the stream: an error status or a reset
        ("oversized", "8"),  # RESOURCE_EXHAUSTED from grpc itself, past the receive limit
        ("gzip bomb", "8"),
        ("not gzip", "13"),  # INTERNAL: grpc could not decompress it
    ],
)
def test_hostile_calls_get_an_error_status_and_the_server_keeps_serving(
    small_collector: Served, case: str, status: str | None
) -> None:
    call = RawCall(small_collector.grpc_address)
    valid = _valid_body()
    started = time.monotonic()
    if case == "garbage":
        answer = call.send(b"\xff\xfe garbage \x00" * 40)
    elif case == "truncated message":
        answer = call.send(valid[: len(valid) // 2])
    elif case == "declared longer than sent":
        answer = call.send(valid[:100], declared=5000)
    elif case == "oversized":
        answer = call.send(b"\x0a" * (2 * 1024 * 1024))
    elif case == "gzip bomb":
        answer = call.send(_gzip_bomb(512 * 1024 * 1024), compressed=True)  # 512 MiB in 0.5 MiB
    else:
        answer = call.send(b"this is not gzip", compressed=True)
    if status is None:
        assert answer.get("grpc-status", "0") != "0" or "reset" in answer or not answer
    else:
        assert answer.get("grpc-status") == status, answer
        assert answer.get("grpc-message")
    assert time.monotonic() - started < 15
    # The same server stores the next valid call.
    before = count(small_collector.store, "SELECT count(*) FROM spans")
    assert raw_stub(small_collector.grpc_address)(valid, timeout=20) == b""
    assert small_collector.store.flush(30)
    assert count(small_collector.store, "SELECT count(*) FROM spans") == before + len(pipeline_spans())


def test_a_gzip_bomb_costs_the_server_at_most_its_limit(small_collector: Served) -> None:
    call = RawCall(small_collector.grpc_address)
    bomb = _gzip_bomb(1024 * 1024 * 1024)
    before = _rss_kib()
    for _ in range(3):
        assert call.send(bomb, compressed=True)["grpc-status"] == "8"
    # Decompressing the 1 GiB would show in this process (the collector runs here); the limit is 1 MiB.
    assert _rss_kib() - before < 200 * 1024


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_a_flood_of_concurrent_calls_is_answered_and_every_acknowledged_span_is_stored(
    tmp_path: Path,
) -> None:
    limits = ReceiverLimits(max_connections=8, max_concurrent_ingest=2, ingest_wait_s=0.5)
    with served(tmp_path / "c.duckdb", limits=limits, grpc=True) as server:
        bodies = [protobuf_body(pipeline_spans()) for _ in range(200)]
        stub = raw_stub(server.grpc_address)
        calls = [stub.future(body, timeout=60) for body in bodies]
        acknowledged, refused = 0, 0
        for call in calls:
            try:
                call.result()
                acknowledged += 1
            except grpc.RpcError as error:
                # Past maximum_concurrent_rpcs RESOURCE_EXHAUSTED; past the streams of one connection,
                # a refused stream (UNAVAILABLE). Exporters retry both.
                assert error.code() in RETRYABLE, error  # type: ignore[attr-defined]
                refused += 1
        assert acknowledged + refused == len(bodies) and acknowledged > 0 and refused > 0
        assert server.store.flush(30)
        assert count(server.store, "SELECT count(*) FROM spans") == acknowledged * len(pipeline_spans())
        # and it serves again once the flood is over
        assert stub(protobuf_body(pipeline_spans()), timeout=20) == b""


# -- limits, back-pressure, token -----------------------------------------------------------------


def test_busy_slots_answer_resource_exhausted_with_retry_info(tmp_path: Path) -> None:
    limits = ReceiverLimits(max_concurrent_ingest=1, ingest_wait_s=0.2)
    with served(tmp_path / "c.duckdb", limits=limits, grpc=True) as server:
        assert server.collector.grpc is not None
        slots = server.collector.grpc.intake.slots
        assert slots.acquire(1)  # an HTTP request holds the only slot
        try:
            with pytest.raises(grpc.RpcError) as refused:
                raw_stub(server.grpc_address)(_valid_body(), timeout=20)
        finally:
            slots.release()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert retry_delay_s(refused.value) == 1
        assert raw_stub(server.grpc_address)(_valid_body(), timeout=20) == b""
        assert httpx.get(server.url + "/api/status", timeout=30).json()["refused"]["busy"] == 1


def test_a_saturated_writer_answers_unavailable_and_the_exporter_retries_without_duplicates(
    tmp_path: Path,
) -> None:
    db = tmp_path / "c.duckdb"
    with served(db, max_queued_spans=100, grpc=True) as server:
        first, second = pipeline_spans(runs=3), pipeline_spans(runs=3)
        assert 25 < len(first) < 50
        stub = raw_stub(server.grpc_address)
        with lock_held(tmp_path, db):
            assert stub(protobuf_body(first), timeout=20) == b""
            with pytest.raises(grpc.RpcError) as refused:
                stub(protobuf_body(second), timeout=20)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
            assert retry_delay_s(refused.value) == 1
            # The real exporter follows the retry info until the lock goes away.
            exporter = OTLPSpanExporter(endpoint=server.grpc_address, insecure=True, timeout=30)
            exported = futures.ThreadPoolExecutor(1).submit(exporter.export, second)
            time.sleep(1.5)
        assert exported.result(timeout=60).name == "SUCCESS"
        exporter.shutdown()
        assert server.store.flush(30)
        assert count(server.store, "SELECT count(*) FROM spans") == len(first) + len(second)


def test_a_token_is_required_in_the_metadata(tmp_path: Path) -> None:
    with served(tmp_path / "c.duckdb", token="s3cret", grpc=True) as server:
        stub = raw_stub(server.grpc_address)
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "s3cret"),)):
            with pytest.raises(grpc.RpcError) as refused:
                stub(_valid_body(), metadata=metadata, timeout=20)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        assert stub(_valid_body(), metadata=(("authorization", "Bearer s3cret"),), timeout=20) == b""
        # The real exporter with its headers option
        exporter = OTLPSpanExporter(
            endpoint=server.grpc_address, insecure=True, headers={"authorization": "Bearer s3cret"}
        )
        assert exporter.export(pipeline_spans()).name == "SUCCESS"
        exporter.shutdown()


def test_logs_over_grpc_that_do_not_decode_are_invalid_argument(collector: Served) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        raw_stub(collector.grpc_address, LOGS_METHOD)(b"\xff" * 64, timeout=20)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "ExportLogsServiceRequest" in (refused.value.details() or "")  # type: ignore[attr-defined]


# -- SIGTERM during a stream of calls ---------------------------------------------------------------

SERVE = """
import sys
from otel_workflow.server.app import serve
serve(sys.argv[1], port=0, grpc_port=int(sys.argv[2]), on_ready=lambda url: print(url, flush=True),
      log_level="warning")
print("closed", flush=True)
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_sigterm_during_a_grpc_stream_loses_no_acknowledged_span(tmp_path: Path) -> None:
    db = tmp_path / "served.duckdb"
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(db), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acknowledged: list[str] = []
    stop = threading.Event()

    def send() -> None:
        stub = raw_stub(f"127.0.0.1:{port}")
        while not stop.is_set():
            spans = pipeline_spans()
            try:
                stub(protobuf_body(spans), timeout=10)
            except grpc.RpcError:
                return  # the server is going away: nothing more is acknowledged
            acknowledged.extend(f"{span.context.span_id:016x}" for span in spans if span.context)

    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith("http://127.0.0.1:"), process.stderr
        senders = [threading.Thread(target=send) for _ in range(3)]
        for sender in senders:
            sender.start()
        time.sleep(2)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
        stop.set()
        for sender in senders:
            sender.join(30)
    finally:
        stop.set()
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    assert process.returncode == 0, err
    assert "closed" in out
    assert len(acknowledged) > 100
    store = TraceStore(db, read_only=True)
    try:
        stored = {row[0] for row in store.sql("SELECT span_id FROM spans")}
    finally:
        store.close()
    assert set(acknowledged) <= stored
