"""The capture switch crosses a service boundary in W3C baggage, and only into services that trust it.

Service A (capture on) calls service B over real HTTP on 127.0.0.1, injecting context with the global
propagators (tracecontext + baggage). B is a WSGI app under the OpenTelemetry WSGI middleware and
`otel_workflow.wsgi.WorkflowTraceMiddleware`, served by wsgiref in a thread. Each service has its own
provider and DuckDB file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment

import pytest
from capture_support import OtlpReceiver, Service, WsgiServer, http_request, make_service, proto_events
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

from otel_workflow import capture_io, io_capture_enabled, wsgi
from otel_workflow.instrument.capture.flag import capture_limiter, configure_capture
from otel_workflow.instrument.http.edge import RequestInfo

SECRET = "b-side-secret-51d0"


@pytest.fixture(autouse=True)
def fresh_capture_policy() -> Iterator[None]:
    configure_capture(captures_per_minute=None)
    yield
    configure_capture()
    capture_limiter().reset()


@pytest.fixture
def service_a(tmp_path: Path) -> Iterator[Service]:
    svc = make_service(tmp_path / "a.duckdb", "frontend", workflow_id="checkout")
    try:
        yield svc
    finally:
        svc.close()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.fixture
def service_b(tmp_path: Path, receiver: OtlpReceiver) -> Iterator[Service]:
    svc = make_service(
        tmp_path / "b.duckdb", "billing", workflow_id="billing", otlp_endpoint=receiver.endpoint
    )
    try:
        yield svc
    finally:
        svc.close()


def billing_app(service: Service, seen: list[bool]) -> Any:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        with service.wf.execution() as run, service.wf.step("charge") as step:
            seen.append(io_capture_enabled())
            step.record_input({"request": json.loads(body), "api_key": SECRET})
            step.record_output({"charged": True, "execution": run.execution_id})
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"execution": run.execution_id}).encode()]

    return app


def call_billing(service_a: Service, url: str) -> str:
    """Service A: one captured execution whose step calls B with the standard propagators."""
    wf = service_a.wf
    with capture_io(), wf.execution(trigger_type="POST /checkout") as run, wf.step("bill") as step:
        request = {"order": 7, "amount": 1999}
        step.record_input(request)
        headers = {"Content-Type": "application/json"}
        propagate.inject(headers)  # traceparent and baggage, with workflow.capture_io=true
        assert "workflow.capture_io=true" in headers["baggage"]
        status, body = http_request(url, method="POST", headers=headers, body=json.dumps(request).encode())
        assert status == 200
        step.record_output(json.loads(body))
    return trace.format_trace_id(run.span.get_span_context().trace_id)


def serve_b(service_b: Service, seen: list[bool], **options: Any) -> WsgiServer:
    app = wsgi.WorkflowTraceMiddleware(billing_app(service_b, seen), **options)
    return WsgiServer(OpenTelemetryMiddleware(app, tracer_provider=service_b.provider))


def from_loopback(info: RequestInfo) -> bool:
    """The trust rule of an internal service: callers on this host only."""
    return info.client == "127.0.0.1"


def test_a_trusting_downstream_service_captures_the_same_request(
    service_a: Service, service_b: Service, receiver: OtlpReceiver
) -> None:
    seen: list[bool] = []
    with serve_b(service_b, seen, trust_inbound_baggage=from_loopback) as server:
        trace_id = call_billing(service_a, f"{server.url}/charge")
    service_a.finish()
    service_b.finish()

    assert seen == [True]
    [b_execution] = service_b.executions()
    assert b_execution["trace_id"] == trace_id  # one trace across both services
    assert b_execution["metadata"]["capture_io"] is True
    [b_step] = service_b.steps()
    assert json.loads(b_step["input_data"]) == {
        "request": {"order": 7, "amount": 1999},
        "api_key": "[REDACTED]",
    }
    assert json.loads(b_step["output_data"])["charged"] is True
    [a_step] = service_a.steps()
    assert json.loads(a_step["output_data"]) == {"execution": b_execution["id"]}
    assert SECRET not in service_b.everything_stored()

    # B's OTLP export carries its payloads too.
    [exported] = [s for s in receiver.spans() if s.name == "workflow.step.charge"]
    events = dict(proto_events(exported))
    assert json.loads(events["workflow.step.input"]["workflow.io.json"])["api_key"] == "[REDACTED]"
    assert SECRET.encode() not in receiver.raw()


def test_a_downstream_service_that_does_not_trust_the_caller_does_not_capture(
    service_a: Service, service_b: Service, receiver: OtlpReceiver
) -> None:
    seen: list[bool] = []
    with serve_b(service_b, seen) as server:  # default: inbound capture flags are not trusted
        trace_id = call_billing(service_a, f"{server.url}/charge")
    service_a.finish()
    service_b.finish()

    assert seen == [False]
    [b_execution] = service_b.executions()
    assert b_execution["trace_id"] == trace_id  # the trace still continues: only the flag is dropped
    assert b_execution["metadata"]["capture_io"] is False
    [b_step] = service_b.steps()
    assert b_step["input_data"] is None and b_step["output_data"] is None
    assert service_b.rows("SELECT count(*) FROM span_events WHERE name LIKE 'workflow.step.%put'") == [(0,)]
    assert not [e for s in receiver.spans() for e, _ in proto_events(s) if e.startswith("workflow.step.")]
    assert b"workflow.io.json" not in receiver.raw()
    # A itself captured its side.
    [a_step] = service_a.steps()
    assert json.loads(a_step["input_data"]) == {"order": 7, "amount": 1999}
