"""The ASGI and WSGI middlewares: the header switch, inbound-baggage trust, trigger and user, rate limit.

ASGI apps are driven with httpx's ASGITransport (the app runs in the test's event loop, as under a server);
WSGI apps are served by wsgiref on 127.0.0.1 in a thread and called over real HTTP.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment

import httpx
import pytest
from capture_support import Service, WsgiServer, http_request, make_service
from opentelemetry import baggage, propagate, trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware as OtelAsgiMiddleware
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware as OtelWsgiMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from otel_workflow import asgi, io_capture_enabled, wsgi
from otel_workflow.instrument.capture.flag import capture_limiter, capture_refused_count, configure_capture
from otel_workflow.instrument.http.edge import RequestInfo

SECRET = "pa55-w0rd-7c1e"
FLAG = "workflow.capture_io=true"
CLAIMS = {"sub": "user-17", "email": "alice@example.com", "name": "Alice"}


@pytest.fixture(autouse=True)
def fresh_capture_policy() -> Iterator[None]:
    configure_capture(captures_per_minute=None)
    yield
    configure_capture()
    capture_limiter().reset()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    svc = make_service(tmp_path / "edge.duckdb", "edge")
    try:
        yield svc
    finally:
        svc.close()


def observe() -> dict[str, Any]:
    """What the application sees of the switch and baggage in its context."""
    return {
        "capture": io_capture_enabled(),
        "tenant": baggage.get_baggage("tenant"),
        "flag": baggage.get_baggage("workflow.capture_io"),
    }


# -- ASGI ------------------------------------------------------------------------------------------

Scope = dict[str, Any]


def asgi_app(service: Service, seen: list[dict[str, Any]]) -> Any:
    """A raw ASGI app: one execution per request, whose step records the body and a secret."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        with service.wf.execution() as run, service.wf.step("handle") as step:
            step.record_input({"body": body.decode(), "password": SECRET})
            step.record_output({"ok": True})
            seen.append({**observe(), "baggage_header": headers.get("baggage"), "run": run.execution_id})
        start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        await send(start)
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def auth_layer(app: Any) -> Any:
    """Stands for an authentication middleware that verified a token and put its claims in the scope."""

    async def middleware(scope: Scope, receive: Any, send: Any) -> None:
        if any(k == b"authorization" for k, _ in scope.get("headers", ())):
            scope.setdefault("state", {})["jwt_claims"] = dict(CLAIMS)
        await app(scope, receive, send)

    return middleware


def call_asgi(app: Any, requests: list[dict[str, Any]]) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return [await client.request(**request) for request in requests]

    return asyncio.run(run())


def test_asgi_header_switches_capture_on_and_fills_trigger_and_user(service: Service) -> None:
    seen: list[dict[str, Any]] = []
    app = asgi.WorkflowTraceMiddleware(auth_layer(asgi_app(service, seen)))
    responses = call_asgi(
        app,
        [
            {"method": "POST", "url": "/orders", "content": b"order-1",
             "headers": {"X-Workflow-Trace": "true", "Authorization": "Bearer t"}},
            {"method": "POST", "url": "/orders", "content": b"order-2",
             "headers": {"Authorization": "Bearer t"}},
            {"method": "GET", "url": "/health", "headers": {"X-Workflow-Trace": "false"}},
        ],
    )  # fmt: skip
    service.finish()
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert [s["capture"] for s in seen] == [True, False, False]
    # The inner layers see the decision in the baggage header too.
    assert seen[0]["baggage_header"] == FLAG and seen[1]["baggage_header"] is None

    executions = service.executions()
    assert [(e["trigger_type"], e["triggered_by"], e["metadata"]["capture_io"]) for e in executions] == [
        ("POST /orders", "alice@example.com", True),
        ("POST /orders", "alice@example.com", False),
        ("GET /health", None, False),
    ]
    steps = service.steps()
    assert json.loads(steps[0]["input_data"]) == {"body": "order-1", "password": "[REDACTED]"}
    assert [s["input_data"] for s in steps[1:]] == [None, None]
    assert SECRET not in service.everything_stored()
    assert io_capture_enabled() is False  # nothing leaked into the caller's context


def test_asgi_untrusted_inbound_baggage_is_ignored_and_trusted_is_honoured(service: Service) -> None:
    seen: list[dict[str, Any]] = []
    inner = asgi_app(service, seen)
    inbound = {"baggage": f"tenant=acme,{FLAG}"}
    call_asgi(asgi.WorkflowTraceMiddleware(inner), [{"method": "GET", "url": "/a", "headers": inbound}])
    # An encoded key is the same key to the propagator: it must not slip through either.
    encoded = {"baggage": "workflow%2Ecapture_io=true"}
    call_asgi(asgi.WorkflowTraceMiddleware(inner), [{"method": "GET", "url": "/b", "headers": encoded}])

    def internal(info: RequestInfo) -> bool:
        return info.client == "127.0.0.1" and info.headers.get("x-caller") == "billing"

    trusting = asgi.WorkflowTraceMiddleware(inner, trust_inbound_baggage=internal)
    call_asgi(
        trusting,
        [
            {"method": "GET", "url": "/c", "headers": {**inbound, "x-caller": "billing"}},
            {"method": "GET", "url": "/d", "headers": {**inbound, "x-caller": "someone"}},
        ],
    )
    trust_all = asgi.WorkflowTraceMiddleware(inner, trust_inbound_baggage=True)
    call_asgi(trust_all, [{"method": "GET", "url": "/e", "headers": inbound}])
    service.finish()

    assert [s["capture"] for s in seen] == [False, False, True, False, True]
    # Other baggage passes through untouched; the flag is gone from context and header alike.
    assert seen[0]["tenant"] == "acme" and seen[0]["flag"] is None
    assert seen[0]["baggage_header"] == "tenant=acme"
    assert seen[1]["baggage_header"] is None
    assert [e["metadata"]["capture_io"] for e in service.executions()] == [False, False, True, False, True]


def test_asgi_header_policy_can_refuse(service: Service) -> None:
    seen: list[dict[str, Any]] = []
    app = asgi.WorkflowTraceMiddleware(
        asgi_app(service, seen), allow_header=lambda info: info.path.startswith("/debug/")
    )
    call_asgi(
        app,
        [
            {"method": "GET", "url": "/orders", "headers": {"X-Workflow-Trace": "true"}},
            {"method": "GET", "url": "/debug/orders", "headers": {"X-Workflow-Trace": "TRUE"}},
        ],
    )
    assert [s["capture"] for s in seen] == [False, True]


def test_asgi_rate_limit_refuses_past_the_limit_and_counts(service: Service) -> None:
    configure_capture(captures_per_minute=2)
    seen: list[dict[str, Any]] = []
    app = asgi.WorkflowTraceMiddleware(asgi_app(service, seen))
    responses = call_asgi(
        app, [{"method": "POST", "url": "/orders", "headers": {"X-Workflow-Trace": "true"}}] * 5
    )
    service.finish()
    assert all(r.status_code == 200 for r in responses)  # refused requests run normally
    assert [s["capture"] for s in seen] == [True, True, False, False, False]
    assert capture_refused_count() == 3
    assert sum(s["input_data"] is not None for s in service.steps()) == 2


def test_asgi_behind_the_opentelemetry_middleware(service: Service) -> None:
    """The OpenTelemetry middleware extracts traceparent and baggage first; ours keeps the trace and
    still drops the untrusted flag that it extracted."""
    seen: list[dict[str, Any]] = []
    app = OtelAsgiMiddleware(
        asgi.WorkflowTraceMiddleware(asgi_app(service, seen)), tracer_provider=service.provider
    )
    client_tracer = service.provider.get_tracer("client")
    with client_tracer.start_as_current_span("client call") as client_span:
        headers: dict[str, str] = {}
        propagate.inject(headers, context=baggage.set_baggage("workflow.capture_io", "true"))
    call_asgi(
        app,
        [
            {"method": "POST", "url": "/orders", "headers": headers},
            {"method": "POST", "url": "/orders", "headers": {**headers, "X-Workflow-Trace": "true"}},
        ],
    )
    service.finish()
    assert [s["capture"] for s in seen] == [False, True]
    trace_id = trace.format_trace_id(client_span.get_span_context().trace_id)
    rows = service.rows(
        "SELECT e.trace_id, p.kind, p.trace_id FROM spans e JOIN spans p ON p.span_id = e.parent_span_id "
        "WHERE e.workflow_role = 'execution' ORDER BY e.start_time"
    )
    assert rows == [(trace_id, "SERVER", trace_id)] * 2  # one trace, parented on the server span
    assert [e["trigger_type"] for e in service.executions()] == ["POST /orders", "POST /orders"]


def test_starlette_request_state_claims_and_trigger(service: Service) -> None:
    """A realistic stack: Starlette with an auth middleware that sets `request.state.jwt_claims`."""

    class Auth(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
            if request.headers.get("authorization") == "Bearer good":
                request.state.jwt_claims = {"email": "", "sub": "user-42"}  # empty email: falls through
            return await call_next(request)

    async def create_order(request: Request) -> Response:
        order = await request.json()
        with service.wf.execution(trigger_data=order) as run, service.wf.step("create") as step:
            step.record_input(order)
        return JSONResponse({"execution": run.execution_id})

    app = Starlette(
        routes=[Route("/orders", create_order, methods=["POST"])],
        middleware=[Middleware(asgi.WorkflowTraceMiddleware), Middleware(Auth)],
    )
    [response] = call_asgi(
        app,
        [{"method": "POST", "url": "/orders", "json": {"item": "book", "token": "t-1"},
          "headers": {"Authorization": "Bearer good", "X-Workflow-Trace": "true"}}],
    )  # fmt: skip
    service.finish()
    [execution] = service.executions()
    assert execution["id"] == response.json()["execution"]
    assert (execution["trigger_type"], execution["triggered_by"]) == ("POST /orders", "user-42")
    [step] = service.steps()
    assert json.loads(step["input_data"]) == {"item": "book", "token": "[REDACTED]"}


def test_explicit_trigger_arguments_win_over_the_request(service: Service) -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        with service.wf.execution(trigger_type="nightly import"):
            pass
        with service.wf.execution(triggered_by="system"):
            pass
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    request = {"method": "PUT", "url": "/jobs/1", "headers": {"Authorization": "t"}}
    call_asgi(asgi.WorkflowTraceMiddleware(auth_layer(app)), [request])
    service.finish()
    assert [(e["trigger_type"], e["triggered_by"]) for e in service.executions()] == [
        ("nightly import", "alice@example.com"),
        ("PUT /jobs/1", "system"),
    ]


def test_asgi_passes_lifespan_through() -> None:
    received: list[str] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        received.append(scope["type"])

    asyncio.run(asgi.WorkflowTraceMiddleware(app)({"type": "lifespan"}, None, None))  # type: ignore[arg-type]
    assert received == ["lifespan"]


# -- WSGI ------------------------------------------------------------------------------------------


def wsgi_app(service: Service, seen: list[dict[str, Any]], *, streamed: bool = False) -> Any:
    def handle(environ: WSGIEnvironment) -> bytes:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        with service.wf.execution() as run, service.wf.step("handle") as step:
            step.record_input({"body": body.decode(), "password": SECRET})
            seen.append({**observe(), "baggage_header": environ.get("HTTP_BAGGAGE"), "run": run.execution_id})
        return b"ok"

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("HTTP_AUTHORIZATION"):
            environ["otel_workflow.jwt_claims"] = dict(CLAIMS)
        start_response("200 OK", [("Content-Type", "text/plain")])
        if streamed:
            # The work happens while the server iterates the response, after the middleware returned.
            return (handle(environ) for _ in range(1))
        return [handle(environ)]

    return app


def test_wsgi_header_trust_trigger_and_user(service: Service) -> None:
    seen: list[dict[str, Any]] = []
    app = wsgi.WorkflowTraceMiddleware(
        wsgi_app(service, seen), trust_inbound_baggage=lambda info: info.headers.get("x-caller") == "billing"
    )
    with WsgiServer(app) as server:
        url = f"{server.url}/orders/7?x=1"
        requests: list[dict[str, Any]] = [
            {"method": "POST", "body": b"one", "headers": {"X-Workflow-Trace": "true", "Authorization": "t"}},
            {"method": "POST", "body": b"two", "headers": {}},
            {"method": "GET", "headers": {"baggage": f"tenant=acme,{FLAG}"}},
            {"method": "GET", "headers": {"baggage": FLAG, "X-Caller": "billing"}},
        ]
        statuses = [http_request(url, **r)[0] for r in requests]
    service.finish()
    assert statuses == [200] * 4
    assert [s["capture"] for s in seen] == [True, False, False, True]
    assert seen[2]["tenant"] == "acme" and seen[2]["baggage_header"] == "tenant=acme"
    executions = service.executions()
    assert [(e["trigger_type"], e["triggered_by"]) for e in executions] == [
        ("POST /orders/7", "alice@example.com"),
        ("POST /orders/7", None),
        ("GET /orders/7", None),
        ("GET /orders/7", None),
    ]
    assert [e["metadata"]["capture_io"] for e in executions] == [True, False, False, True]
    assert json.loads(service.steps()[0]["input_data"]) == {"body": "one", "password": "[REDACTED]"}
    assert SECRET not in service.everything_stored()


def test_wsgi_streamed_response_runs_in_the_request_context(service: Service) -> None:
    seen: list[dict[str, Any]] = []
    app = wsgi.WorkflowTraceMiddleware(wsgi_app(service, seen, streamed=True))
    with WsgiServer(app) as server:
        http_request(f"{server.url}/stream", headers={"X-Workflow-Trace": "true", "Authorization": "t"})
        http_request(f"{server.url}/stream")
    service.finish()
    assert [s["capture"] for s in seen] == [True, False]
    assert [(e["trigger_type"], e["triggered_by"]) for e in service.executions()] == [
        ("GET /stream", "alice@example.com"),
        ("GET /stream", None),
    ]


def test_wsgi_rate_limit_refuses_past_the_limit_and_counts(service: Service) -> None:
    configure_capture(captures_per_minute=1)
    seen: list[dict[str, Any]] = []
    with WsgiServer(wsgi.WorkflowTraceMiddleware(wsgi_app(service, seen))) as server:
        for _ in range(3):
            assert http_request(f"{server.url}/x", headers={"X-Workflow-Trace": "true"})[0] == 200
    service.finish()
    assert [s["capture"] for s in seen] == [True, False, False]
    assert capture_refused_count() == 2
    assert [e["metadata"]["capture_io"] for e in service.executions()] == [True, False, False]


def test_wsgi_behind_the_opentelemetry_middleware(service: Service) -> None:
    seen: list[dict[str, Any]] = []
    inner = wsgi.WorkflowTraceMiddleware(wsgi_app(service, seen, streamed=True))
    app = OtelWsgiMiddleware(inner, tracer_provider=service.provider)
    with service.provider.get_tracer("client").start_as_current_span("client call") as client_span:
        headers: dict[str, str] = {}
        propagate.inject(headers, context=baggage.set_baggage("workflow.capture_io", "true"))
    with WsgiServer(app) as server:
        http_request(f"{server.url}/orders", headers=headers)
        http_request(f"{server.url}/orders", headers={**headers, "X-Workflow-Trace": "true"})
    service.finish()
    assert [s["capture"] for s in seen] == [False, True]
    trace_id = trace.format_trace_id(client_span.get_span_context().trace_id)
    rows = service.rows(
        "SELECT e.trace_id, p.kind FROM spans e JOIN spans p ON p.span_id = e.parent_span_id "
        "WHERE e.workflow_role = 'execution'"
    )
    assert rows == [(trace_id, "SERVER")] * 2


def test_a_failing_policy_callable_counts_as_no(service: Service) -> None:
    seen: list[dict[str, Any]] = []

    def broken(info: RequestInfo) -> bool:
        raise RuntimeError("policy bug")

    app: Callable[..., Any] = asgi.WorkflowTraceMiddleware(
        asgi_app(service, seen), trust_inbound_baggage=broken, allow_header=broken
    )
    call_asgi(app, [{"method": "GET", "url": "/", "headers": {"baggage": FLAG, "X-Workflow-Trace": "true"}}])
    assert [s["capture"] for s in seen] == [False]
