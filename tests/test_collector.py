"""`otel-workflow serve`: OTLP/HTTP in (the real OTLPSpanExporter, an OTLP/JSON client), the same rows
as in-process, the standard answers to bad requests, back-pressure without duplicates, the token,
and the read API over HTTP."""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from collector_support import (
    Served,
    assert_same_rows,
    otlp_json,
    pipeline_spans,
    post,
    post_json,
    protobuf_body,
    run_pipeline,
    served,
)
from conftest import make_traced
from google.rpc import status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from reliability_support import lock_held
from support import wait_until

from otel_workflow import TraceStore
from otel_workflow.export.files import export_otlp_json
from otel_workflow.server.app import DEFAULT_HOST, DEFAULT_PORT, Collector, ReceiverLimits, serve
from otel_workflow.server.security import check_exposure

PROTOBUF = "application/x-protobuf"


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Served]:
    with served(tmp_path / "collector.duckdb") as server:
        yield server


def count(store: TraceStore, query: str) -> Any:
    return store.sql(query)[0][0]


# -- the same rows as in-process ------------------------------------------------------------------


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip, Compression.Deflate])
def test_the_otlp_exporter_gives_the_rows_of_the_in_process_exporter(
    tmp_path: Path, collector: Served, compression: Compression
) -> None:
    # One provider exports the same spans both ways: in-process into one file, OTLP to the collector.
    traced = make_traced(tmp_path / "in-process.duckdb")
    exporter = OTLPSpanExporter(endpoint=collector.traces_url, compression=compression)
    traced.provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=50))
    try:
        run_pipeline(traced.provider, runs=3)
        traced.provider.shutdown()
        assert collector.store.flush(30)
        assert_same_rows(traced.store, collector.store)
        assert count(collector.store, "SELECT count(*) FROM workflow_executions") == 4
        assert count(collector.store, "SELECT count(*) FROM running_spans") == 0
    finally:
        traced.store.close()


def test_an_otlp_json_client_gives_the_rows_of_the_in_process_exporter(
    tmp_path: Path, collector: Served
) -> None:
    traced = make_traced(tmp_path / "in-process.duckdb")
    memory = InMemorySpanExporter()
    traced.provider.add_span_processor(SimpleSpanProcessor(memory))
    try:
        run_pipeline(traced.provider, runs=2)
        traced.provider.shutdown()
        status, answer = post_json(collector.traces_url, otlp_json(list(memory.get_finished_spans())))
        assert (status, answer) == (200, {})
        assert collector.store.flush(30)
        assert_same_rows(traced.store, collector.store)
    finally:
        traced.store.close()


ROUNDTRIP_EXCLUDE = {
    "spans": "duration_ms",
    "span_events": "",
    "span_links": "",
    "workflow_executions": "duration_ms",
    "execution_steps": "duration_ms",
    "execution_logs": "message, fields",
}


def test_an_otlp_json_export_of_the_database_imports_back_unchanged(
    tmp_path: Path, collector: Served
) -> None:
    traced = make_traced(tmp_path / "in-process.duckdb")
    try:
        run_pipeline(traced.provider, runs=2)
        traced.provider.shutdown()
        exported = io.StringIO()
        export_otlp_json(traced.store, exported)
        status, _, _ = post(collector.traces_url, exported.getvalue().encode(), "application/json")
        assert status == 200
        assert collector.store.flush(30)
        # The database keeps microseconds, so durations recomputed from the export may differ in the
        # last digit from those computed from the SDK's nanoseconds; everything else is the same.
        for table, differ in ROUNDTRIP_EXCLUDE.items():
            query = (
                f"SELECT * EXCLUDE ({differ}) FROM {table} ORDER BY ALL"
                if differ
                else f"SELECT * FROM {table} ORDER BY ALL"
            )
            assert collector.store.sql(query) == traced.store.sql(query), table
    finally:
        traced.store.close()


def test_spans_with_invalid_ids_are_reported_as_partial_success(collector: Served) -> None:
    good = {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "name": "good"}
    bad = {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "00", "name": "bad"}
    document = {"resourceSpans": [{"scopeSpans": [{"spans": [good, bad]}]}]}
    status, answer = post_json(collector.traces_url, document)
    assert status == 200
    assert answer["partialSuccess"]["rejectedSpans"] == "1"
    assert "span_id must be 8 bytes" in answer["partialSuccess"]["errorMessage"]

    from otel_workflow.otlp.decode import parse_json  # noqa: PLC0415 - the same request, as protobuf

    body = parse_json(json.dumps(document)).SerializeToString()
    status, headers, raw = post(collector.traces_url, body, PROTOBUF)
    assert status == 200 and headers["content-type"] == PROTOBUF
    assert ExportTraceServiceResponse.FromString(raw).partial_success.rejected_spans == 1
    assert collector.store.flush(30)
    assert collector.store.sql("SELECT name FROM spans") == [("good",)]


# -- bad requests ---------------------------------------------------------------------------------

SMALL = ReceiverLimits(max_body_bytes=64 * 1024, max_decompressed_bytes=1024 * 1024)


@pytest.fixture(scope="module")
def small_collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One collector with small body limits for all the bad requests: it must survive them all."""
    with served(tmp_path_factory.mktemp("small") / "c.duckdb", limits=SMALL) as server:
        yield server


@functools.cache
def _bomb() -> bytes:
    # 64 MiB of zeros compress to about 64 KiB: under the wire limit, far over the decompressed one.
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b"\0" * (1024 * 1024)
    return b"".join(compressor.compress(chunk) for _ in range(60)) + compressor.flush()


def _chunks(data: bytes, size: int = 8192) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"\xff\x00garbage", {"content-type": PROTOBUF}, 400),
        (b'{"resourceSpans": [', {"content-type": "application/json"}, 400),
        (b'{"resourceSpans": 7}', {"content-type": "application/json; charset=utf-8"}, 400),
        (b"{}", {"content-type": "text/plain"}, 415),
        (b"{}", {}, 415),
        (b"{}", {"content-type": "application/json", "content-encoding": "br"}, 415),
        (b"\0" * (65 * 1024), {"content-type": PROTOBUF}, 413),
        (_bomb(), {"content-type": PROTOBUF, "content-encoding": "gzip"}, 413),
        (b"not gzip at all", {"content-type": PROTOBUF, "content-encoding": "gzip"}, 400),
        (gzip.compress(b"{}")[:-6], {"content-type": "application/json", "content-encoding": "gzip"}, 400),
    ],
    ids=[
        "malformed protobuf",
        "malformed json",
        "json of the wrong shape",
        "wrong content type",
        "no content type",
        "unknown encoding",
        "oversized",
        "gzip bomb",
        "corrupt gzip",
        "truncated gzip",
    ],
)
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_bad_requests_get_their_status_and_the_server_keeps_serving(
    small_collector: Served, body: bytes, headers: dict[str, str], status: int, chunked: bool
) -> None:
    server = small_collector
    with httpx.Client(timeout=30) as client:
        # Chunked bodies have no Content-Length: the limits must hold while the body streams in.
        content: Any = _chunks(body) if chunked else body
        answer = client.post(server.traces_url, content=content, headers=headers)
        assert answer.status_code == status, answer.text
        kind = answer.headers["content-type"]
        if kind == PROTOBUF:
            assert status_pb2.Status.FromString(answer.content).message
        else:
            assert json.loads(answer.content)["message"]
        good = client.post(
            server.traces_url, content=protobuf_body(pipeline_spans()), headers={"content-type": PROTOBUF}
        )
        assert good.status_code == 200
        assert client.get(server.url + "/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_decompression_is_incremental_and_capped(chunk: int) -> None:
    from otel_workflow.server.receiver import _Inflater, _TooLarge  # noqa: PLC0415 - the mechanism itself

    data = bytes(range(256)) * 400
    compressed = gzip.compress(data) + gzip.compress(data[:100])  # two members
    inflater = _Inflater(31, len(data) + 100)  # exactly the size: allowed
    for start in range(0, len(compressed), chunk):
        inflater.feed(compressed[start : start + chunk])
    assert inflater.finish() == data + data[:100]
    bomb = _bomb()
    capped = _Inflater(31, 1024 * 1024)
    with pytest.raises(_TooLarge):
        for start in range(0, len(bomb), chunk if chunk > 1 else 64):
            capped.feed(bomb[start : start + (chunk if chunk > 1 else 64)])
    assert len(capped._out) <= 1024 * 1024 + 1  # never more than the cap (and the byte that showed it)


def test_a_gzip_body_of_several_members_is_accepted(collector: Served) -> None:
    body = protobuf_body(pipeline_spans())
    half = len(body) // 2
    # Two concatenated gzip members decompress to the whole body (RFC 1952).
    compressed = gzip.compress(body[:half]) + gzip.compress(body[half:])
    status, _, _ = post(collector.traces_url, compressed, PROTOBUF, {"Content-Encoding": "gzip"})
    assert status == 200


def test_other_signals_and_methods_are_refused(collector: Served) -> None:
    with httpx.Client() as client:
        assert (
            client.post(
                collector.url + "/v1/metrics", content=b"", headers={"content-type": PROTOBUF}
            ).status_code
            == 404
        )
        assert client.post(collector.url + "/v1/logs", content=b"").status_code == 415  # no content type
        assert client.get(collector.traces_url).status_code == 405
        assert client.get(collector.url + "/v1/logs").status_code == 405


@pytest.fixture
def slow_sender() -> Iterator[Any]:
    """Opens requests whose body never finishes arriving; closed at the end."""
    sockets: list[socket.socket] = []

    def start(url: str, length: int = 1000) -> socket.socket:
        host, port = url.removeprefix("http://").split("/")[0].rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=30)
        sockets.append(sock)
        sock.sendall(
            f"POST /v1/traces HTTP/1.1\r\nHost: {host}\r\nContent-Type: {PROTOBUF}\r\n"
            f"Content-Length: {length}\r\n\r\n".encode()
            + b"\x0a"
        )
        return sock

    yield start
    for sock in sockets:
        sock.close()


def test_ingest_is_bounded_busy_slots_answer_429_then_serve_again(tmp_path: Path, slow_sender: Any) -> None:
    limits = ReceiverLimits(max_concurrent_ingest=1, ingest_wait_s=0.2, body_timeout_s=1.0)
    with served(tmp_path / "c.duckdb", limits=limits) as server:
        slow = slow_sender(server.url)
        time.sleep(0.2)  # the slow request takes the only slot
        status, headers, raw = post(server.traces_url, protobuf_body(pipeline_spans()), PROTOBUF)
        assert status == 429
        assert headers["retry-after"] == "1"
        assert status_pb2.Status.FromString(raw).message
        # The slow sender runs out of time (408) and frees the slot.
        slow.settimeout(10)
        assert slow.recv(4096).startswith(b"HTTP/1.1 408")
        status, _, _ = post(server.traces_url, protobuf_body(pipeline_spans()), PROTOBUF)
        assert status == 200


def test_connections_are_bounded(tmp_path: Path, slow_sender: Any) -> None:
    limits = ReceiverLimits(max_connections=2, body_timeout_s=5.0)
    with served(tmp_path / "c.duckdb", limits=limits) as server:
        slow = slow_sender(server.url)
        time.sleep(0.2)
        # uvicorn counts the new connection too: with one held open, a second one reaches the limit.
        status, _, _ = post(server.traces_url, b"", PROTOBUF)
        assert status == 503  # uvicorn's limit_concurrency
        slow.close()
        wait_until(lambda: post(server.traces_url, b"", PROTOBUF)[0] == 200, what="the server to serve again")


def test_a_saturated_writer_answers_503_and_the_exporter_retries_without_duplicates(tmp_path: Path) -> None:
    # A queue bound of 100 spans: the collector refuses requests that would take it past 50.
    db = tmp_path / "c.duckdb"
    with served(db, max_queued_spans=100) as server:
        first, second = pipeline_spans(runs=3), pipeline_spans(runs=3)
        assert 25 < len(first) < 50
        with lock_held(tmp_path, db):
            # Another process holds the file: the writer cannot write, the queue fills.
            status, _, _ = post(server.traces_url, protobuf_body(first), PROTOBUF)
            assert status == 200
            status, headers, _ = post(server.traces_url, protobuf_body(second), PROTOBUF)
            assert status == 503 and headers["retry-after"] == "1"
            # The real exporter backs off (Retry-After) and retries until the lock goes away.
            exporter = OTLPSpanExporter(endpoint=server.traces_url, timeout=20)
            result: list[SpanExportResult] = []
            sender = threading.Thread(target=lambda: result.append(exporter.export(second)))
            sender.start()
            wait_until(lambda: _refused(server) >= 2, what="the exporter's first try to be refused")
        sender.join(30)
        exporter.shutdown()
        assert result == [SpanExportResult.SUCCESS]
        # A retry of a request that was accepted (its answer lost, say) stores nothing twice.
        assert server.store.flush(30)
        status, _, _ = post(server.traces_url, protobuf_body(first), PROTOBUF)
        assert status == 200
        assert server.store.flush(30)
        expected = len(first) + len(second)
        assert count(server.store, "SELECT count(*) FROM spans") == expected
        assert count(server.store, "SELECT count(DISTINCT span_id) FROM spans") == expected
        assert count(server.store, "SELECT count(*) FROM workflow_executions") == 8
        assert server.store.dropped_spans == 0


def _refused(server: Served) -> int:
    with httpx.Client() as client:
        return int(client.get(server.url + "/api/status").json()["refused"]["saturated"])


# -- token -----------------------------------------------------------------------------------------


def test_a_token_guards_ingest_and_read_but_not_health(tmp_path: Path) -> None:
    with served(tmp_path / "c.duckdb", token="s3cret") as server, httpx.Client() as client:
        body = protobuf_body(pipeline_spans())
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic s3cret"}):
            answer = client.post(
                server.traces_url, content=body, headers={"content-type": PROTOBUF, **headers}
            )
            assert answer.status_code == 401
            assert answer.headers["www-authenticate"].startswith("Bearer")
            assert client.get(server.url + "/api/executions", headers=headers).status_code == 401
        exporter = OTLPSpanExporter(endpoint=server.traces_url, headers={"Authorization": "Bearer s3cret"})
        assert exporter.export(pipeline_spans()) == SpanExportResult.SUCCESS
        exporter.shutdown()
        assert server.store.flush(30)
        answer = client.get(server.url + "/api/executions", headers={"authorization": "Bearer s3cret"})
        assert answer.status_code == 200 and len(answer.json()["executions"]) == 2
        assert client.get(server.url + "/healthz").status_code == 200


def test_it_binds_to_loopback_by_default_and_warns_when_exposed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert (DEFAULT_HOST, DEFAULT_PORT) == ("127.0.0.1", 4318)
    with served(tmp_path / "c.duckdb") as server:
        assert server.url.startswith("http://127.0.0.1:")
    with caplog.at_level(logging.WARNING, logger="otel_workflow"):
        check_exposure("127.0.0.1", None)
        check_exposure("::1", None)
        check_exposure("0.0.0.0", "a token")
        assert not caplog.records
        check_exposure("0.0.0.0", None)
    assert "without a token" in caplog.text


def test_on_loopback_it_answers_only_requests_addressed_to_a_loopback_name(collector: Served) -> None:
    # DNS rebinding: a web page's own name resolving to 127.0.0.1 arrives as its Host header.
    with httpx.Client() as client:
        for host in ("evil.example", "evil.example:4318", "192.168.1.5"):
            answer = client.get(collector.url + "/api/executions", headers={"host": host})
            assert answer.status_code == 400, host
        port = collector.url.rsplit(":", 1)[1]
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", "[::1]:4318", "LOCALHOST"):
            assert client.get(collector.url + "/api/executions", headers={"host": host}).status_code == 200, (
                host
            )


# -- read API --------------------------------------------------------------------------------------


def test_the_read_api_serves_executions_logs_stats_and_sql(collector: Served) -> None:
    exporter = OTLPSpanExporter(endpoint=collector.traces_url)
    assert exporter.export(pipeline_spans(runs=2)) == SpanExportResult.SUCCESS
    exporter.shutdown()
    assert collector.store.flush(30)
    api = collector.url + "/api"
    with httpx.Client() as client:
        executions = client.get(api + "/executions").json()["executions"]
        assert len(executions) == 3
        failed = client.get(api + "/executions", params={"status": "failed"}).json()["executions"]
        assert [e["error_message"] for e in failed] == ["ValueError: boom"]
        assert len(client.get(api + "/executions", params={"limit": 1}).json()["executions"]) == 1

        completed = next(e for e in executions if e["status"] == "completed")
        detail = client.get(f"{api}/executions/{completed['id'][:13]}").json()
        assert detail["id"] == completed["id"]
        assert [s["step_name"] for s in detail["steps"]][:3] == ["validate", "charge", "notify"]
        assert any(line["name"] == "HTTP POST" for line in detail["spans"])

        logs = client.get(f"{api}/executions/{completed['id']}/logs").json()["logs"]
        assert logs[0]["message"].startswith("Execution started")
        assert client.get(api + "/logs", params={"level": "error"}).json()["logs"]

        stats = client.get(api + "/stats").json()
        assert {s["step_name"] for s in stats["steps"]} >= {"validate", "charge", "load"}
        assert stats["workflows"][0]["workflow_id"] == "orders"

        rows = client.get(
            api + "/sql", params={"q": "SELECT name FROM spans ORDER BY start_time LIMIT 2"}
        ).json()
        assert rows["columns"] == ["name"] and rows["rows"][0] == ["workflow.execute"]
        bounded = client.post(api + "/sql", json={"query": "SELECT * FROM range(1000000)", "limit": 5}).json()
        assert (bounded["row_count"], bounded["truncated"]) == (5, True)
        text = client.post(
            api + "/sql", content=b"SELECT 1 AS one -- a comment", headers={"content-type": "text/plain"}
        )
        assert text.json()["rows"] == [[1]]

        assert client.get(api + "/executions/nope").status_code == 404
        assert client.post(api + "/sql", json={"query": "DELETE FROM spans"}).status_code == 400
        assert client.get(api + "/sql", params={"q": "SELEC nonsense"}).status_code == 400
        assert client.get(api + "/sql").status_code == 400
        assert client.get(api + "/executions", params={"limit": "lots"}).status_code == 400
        assert client.get(api + "/executions", params={"since": "yesterday-ish"}).status_code == 400
        assert client.get(api + "/stats", params={"sort": "nonsense"}).status_code == 400
        status = client.get(api + "/status").json()
        assert status["accepted_spans"] == count(collector.store, "SELECT count(*) FROM spans")
    assert count(collector.store, "SELECT count(*) FROM spans") > 0  # the refused DELETE changed nothing


# -- property-based: the server survives any body -------------------------------------------------


@pytest.fixture(scope="module")
def shared_collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with served(tmp_path_factory.mktemp("fuzz") / "c.duckdb") as server:
        yield server


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(
        st.binary(max_size=512),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=8),
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
            ),
            max_leaves=10,
        ).map(lambda value: json.dumps({"resourceSpans": value}).encode()),
    ),
    content_type=st.sampled_from([PROTOBUF, "application/json"]),
    compress=st.booleans(),
)
def test_any_body_gets_200_or_400_and_never_stops_the_server(
    shared_collector: Served, body: bytes, content_type: str, compress: bool
) -> None:
    headers = {"Content-Encoding": "gzip"} if compress else {}
    status, _, _ = post(
        shared_collector.traces_url, gzip.compress(body) if compress else body, content_type, headers
    )
    assert status in (200, 400)
    with httpx.Client() as client:
        assert client.get(shared_collector.url + "/healthz").status_code == 200


# -- serve() as its own process --------------------------------------------------------------------

SERVE = """
import sys
from otel_workflow.server.app import serve
serve(sys.argv[1], port=0, grpc_port=None, on_ready=lambda url: print(url, flush=True), log_level="warning")
print("closed", flush=True)
"""


@pytest.mark.slow
def test_serve_writes_what_it_queued_when_terminated(tmp_path: Path) -> None:
    db = tmp_path / "served.duckdb"
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(db)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), process.stderr.read() if process.stderr else ""
        exporter = OTLPSpanExporter(endpoint=url + "/v1/traces")
        spans = pipeline_spans(runs=5)
        assert exporter.export(spans) == SpanExportResult.SUCCESS
        exporter.shutdown()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    assert process.returncode == 0, err
    assert "closed" in out
    store = TraceStore(db, read_only=True)
    assert count(store, "SELECT count(*) FROM spans") == len(spans)
    assert count(store, "SELECT count(*) FROM workflow_executions") == 6


def test_serve_takes_the_documented_arguments() -> None:
    import inspect  # noqa: PLC0415

    parameters = inspect.signature(serve).parameters
    assert list(parameters)[:4] == ["db_path", "host", "port", "token"]
    assert parameters["host"].default == "127.0.0.1" and parameters["port"].default == 4318


def test_collector_can_be_embedded_without_serve(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "embedded.duckdb")
    try:
        with Collector(store, port=0) as running:
            exporter = OTLPSpanExporter(endpoint=running.url + "/v1/traces")
            assert exporter.export(pipeline_spans()) == SpanExportResult.SUCCESS
            exporter.shutdown()
        assert store.flush(30)
        assert count(store, "SELECT count(*) FROM workflow_executions") == 2
    finally:
        store.close()
