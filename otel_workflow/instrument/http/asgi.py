"""`WorkflowTraceMiddleware` for ASGI applications (Starlette, FastAPI, Quart, Django ASGI, ...).

    from otel_workflow.instrument.http.asgi import WorkflowTraceMiddleware

    app = WorkflowTraceMiddleware(app)                          # alone, or
    app = OpenTelemetryMiddleware(WorkflowTraceMiddleware(app))  # inside the OpenTelemetry one

Per request it maps `X-Workflow-Trace: true` to the I/O capture baggage flag,
drops an inbound flag from an untrusted caller, and publishes the request's
trigger for `WorkflowTracer.execution()` (see `otel_workflow.instrument.http.edge`).

The triggering user comes from JWT claims that an authentication layer has
already verified and placed in the scope, read when an execution starts (so
the layer may run inside this middleware). By default from
`scope["state"]["jwt_claims"]` (what `request.state.jwt_claims = claims` sets in
Starlette and FastAPI), else from `scope["otel_workflow.jwt_claims"]`; pass
`claims_getter(scope)` to read them elsewhere. The middleware never decodes or
verifies a token itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any, Final

from opentelemetry import context as otel_context

from otel_workflow.instrument.capture.flag import reset_request_trigger, set_request_trigger
from otel_workflow.instrument.http.edge import (
    BAGGAGE_HEADER,
    DEFAULT_HEADER,
    USER_CLAIMS,
    ClaimsGetter,
    HttpEdge,
    RequestInfo,
    RequestPolicy,
    TriggerNamer,
    report_once,
)

__all__ = ["CLAIMS_SCOPE_KEY", "WorkflowTraceMiddleware", "default_claims"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The scope key read for verified claims when `scope["state"]["jwt_claims"]` is absent.
CLAIMS_SCOPE_KEY: Final = "otel_workflow.jwt_claims"
_BAGGAGE_BYTES = BAGGAGE_HEADER.encode("latin-1")


def default_claims(scope: Scope) -> Mapping[str, Any] | None:
    """Verified JWT claims from `scope["state"]["jwt_claims"]`, else `scope["otel_workflow.jwt_claims"]`."""
    state = scope.get("state")
    if isinstance(state, Mapping):
        claims = state.get("jwt_claims")
        if isinstance(claims, Mapping):
            return claims
    claims = scope.get(CLAIMS_SCOPE_KEY)
    return claims if isinstance(claims, Mapping) else None


def _request_info(scope: Scope) -> RequestInfo:
    headers: dict[str, str] = {}
    for name, value in scope.get("headers") or ():
        key = bytes(name).decode("latin-1").lower()
        text = bytes(value).decode("latin-1")
        headers[key] = f"{headers[key]},{text}" if key in headers else text
    client = scope.get("client")
    method = "WEBSOCKET" if scope.get("type") == "websocket" else str(scope.get("method") or "GET").upper()
    return RequestInfo(
        method=method,
        path=str(scope.get("path") or "/"),
        headers=headers,
        client=str(client[0]) if client else None,
        raw=scope,
    )


def _with_baggage(scope: Scope, header: str) -> Scope:
    # A new scope: the server's one stays as it was sent. `state` and the other values are shared.
    headers = [(n, v) for n, v in scope.get("headers") or () if bytes(n).lower() != _BAGGAGE_BYTES]
    if header:
        headers.append((_BAGGAGE_BYTES, header.encode("latin-1", "replace")))
    return {**scope, "headers": headers}


class WorkflowTraceMiddleware:
    """ASGI middleware: I/O capture switch, inbound-baggage trust, and the request's trigger and user.

    - `trust_inbound_baggage`: honour a `workflow.capture_io` entry in the
      request's baggage (True), never (False, the default), or ask a callable
      `(RequestInfo) -> bool` per request (e.g. by client address or mTLS identity).
    - `allow_header`: whether `X-Workflow-Trace: true` may switch capture on:
      a bool or a callable like the above (default True).
    - `header_name`: the switch header (default `X-Workflow-Trace`).
    - `claims_getter(scope)`: where verified JWT claims are (default `default_claims`).
    - `user_claims`: the claims that name the user, first non-empty wins.
    - `trigger_type(RequestInfo)`: the execution's trigger type (default "METHOD /path").

    Only `http` and `websocket` scopes are handled; others pass through.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        trust_inbound_baggage: RequestPolicy = False,
        allow_header: RequestPolicy = True,
        header_name: str = DEFAULT_HEADER,
        claims_getter: ClaimsGetter | None = None,
        user_claims: Sequence[str] = USER_CLAIMS,
        trigger_type: TriggerNamer | None = None,
    ) -> None:
        self.app = app
        self.edge = HttpEdge(
            trust_inbound_baggage=trust_inbound_baggage,
            allow_header=allow_header,
            header_name=header_name,
            user_claims=user_claims,
            trigger_type=trigger_type,
        )
        self.claims_getter: ClaimsGetter = claims_getter or default_claims

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        inner_scope = scope
        trigger = None
        try:
            info = _request_info(scope)
            decision = self.edge.decide(info)
            if decision.baggage_header is not None:
                inner_scope = _with_baggage(scope, decision.baggage_header)
            # Claims are read from the scope the application gets: that is where its auth layer writes.
            passed = inner_scope
            trigger = self.edge.trigger(info, lambda: self.claims_getter(passed))
        except Exception:
            report_once("the ASGI workflow middleware")
            decision = self.edge.fail_closed()
        token = otel_context.attach(decision.context)
        trigger_token = set_request_trigger(trigger)
        try:
            await self.app(inner_scope, receive, send)
        finally:
            reset_request_trigger(trigger_token)
            otel_context.detach(token)
