"""`otel-workflow serve` as a user starts it: the real entry point in a subprocess, the real OTLP exporter."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from support import otel_workflow_command

from otel_workflow import TraceStore, WorkflowSpanProcessor, WorkflowTracer
from otel_workflow.cli.demo import run_demo


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_healthy(base: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("otel-workflow serve did not become healthy in 30 s")


def test_serve_command_stores_otlp_and_answers_the_read_api(tmp_path: Path) -> None:
    db = tmp_path / "collected.duckdb"
    port, grpc_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            *otel_workflow_command(),
            *(
                "serve",
                "--db",
                str(db),
                "--port",
                str(port),
                "--grpc-port",
                str(grpc_port),
                "--log-level",
                "warning",
            ),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "OTEL_WORKFLOW_TOKEN"},
    )
    try:
        wait_healthy(base, process)
        provider = TracerProvider(shutdown_on_exit=False)
        provider.add_span_processor(WorkflowSpanProcessor())
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{base}/v1/traces")))
        ids = run_demo(WorkflowTracer("order-pipeline", tracer_provider=provider), 2)
        provider.shutdown()
        # ... and a run over OTLP/gRPC, the default transport of most SDKs.
        provider = TracerProvider(shutdown_on_exit=False)
        provider.add_span_processor(WorkflowSpanProcessor())
        grpc_exporter = GrpcSpanExporter(endpoint=f"127.0.0.1:{grpc_port}", insecure=True)
        provider.add_span_processor(BatchSpanProcessor(grpc_exporter))
        ids += run_demo(WorkflowTracer("order-pipeline", tracer_provider=provider), 1)
        provider.shutdown()

        deadline = time.monotonic() + 30
        listed: list[str] = []
        while time.monotonic() < deadline and len(listed) < 3:
            with urllib.request.urlopen(f"{base}/api/executions?limit=10", timeout=5) as response:
                listed = [row["id"] for row in json.load(response)["executions"]]
            time.sleep(0.2)
        assert sorted(listed) == sorted(ids)
        # DNS rebinding: bound to loopback, the command answers only requests addressed to a loopback name.
        refused = urllib.request.Request(f"{base}/api/executions", headers={"Host": "evil.example"})
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(refused, timeout=5)
        answer.value.close()
        assert answer.value.code == 400
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert f"OTLP/gRPC at 127.0.0.1:{grpc_port}" in stderr

    reader = TraceStore(db, read_only=True)
    statuses = sorted(row.status for row in reader.executions())
    assert statuses == ["completed", "failed", "failed"]  # the demo is seeded: its runs end the same way
    assert reader.sql("SELECT count(*) FROM running_spans") == [(0,)]
