"""`WorkflowTraceMiddleware` for WSGI applications (Flask, Django, Falcon, Bottle, ...).

    from otel_workflow.instrument.http.wsgi import WorkflowTraceMiddleware

    app.wsgi_app = WorkflowTraceMiddleware(app.wsgi_app)                          # alone, or
    app.wsgi_app = OpenTelemetryMiddleware(WorkflowTraceMiddleware(app.wsgi_app))  # inside OpenTelemetry's

Per request it maps `X-Workflow-Trace: true` to the I/O capture baggage flag,
drops an inbound flag from an untrusted caller, and publishes the request's
trigger for `WorkflowTracer.execution()` (see `otel_workflow.instrument.http.edge`).

The triggering user comes from JWT claims that an authentication layer has
already verified and placed in the environ, read when an execution starts (so
the layer may run inside this middleware): by default
`environ["otel_workflow.jwt_claims"]` (Flask: `request.environ[...] = claims`;
Django: `request.META[...] = claims`); pass `claims_getter(environ)` to read
them elsewhere. The middleware never decodes or verifies a token itself.

The application runs in its own copy of the caller's context, and so does each
step of iterating its response, so executions and steps inside a streamed
(generator) response see the same switch and trigger.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Final
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from opentelemetry import context as otel_context

from otel_workflow.instrument.capture.flag import set_request_trigger
from otel_workflow.instrument.http.edge import (
    DEFAULT_HEADER,
    USER_CLAIMS,
    ClaimsGetter,
    HttpEdge,
    RequestInfo,
    RequestPolicy,
    TriggerNamer,
    report_once,
)

__all__ = ["CLAIMS_ENVIRON_KEY", "WorkflowTraceMiddleware", "default_claims"]

#: The environ key read for verified JWT claims by default.
CLAIMS_ENVIRON_KEY: Final = "otel_workflow.jwt_claims"


def default_claims(environ: WSGIEnvironment) -> Mapping[str, Any] | None:
    """Verified JWT claims from `environ["otel_workflow.jwt_claims"]`."""
    claims = environ.get(CLAIMS_ENVIRON_KEY)
    return claims if isinstance(claims, Mapping) else None


def _wsgi_text(value: str) -> str:
    # PEP 3333 passes bytes as latin-1 strings: recover the UTF-8 the client sent.
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def _request_info(environ: WSGIEnvironment) -> RequestInfo:
    headers: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith("HTTP_") and isinstance(value, str):
            headers[key[5:].replace("_", "-").lower()] = value
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        value = environ.get(key)
        if isinstance(value, str) and value:
            headers[key.replace("_", "-").lower()] = value
    path = _wsgi_text(str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", ""))) or "/"
    client = environ.get("REMOTE_ADDR")
    return RequestInfo(
        method=str(environ.get("REQUEST_METHOD") or "GET").upper(),
        path=path,
        headers=headers,
        client=str(client) if client else None,
        raw=environ,
    )


class _InContext:
    """The application's response iterable, advanced and closed inside the request's context."""

    def __init__(self, result: Iterable[bytes], context: contextvars.Context) -> None:
        self._result = result
        self._context = context

    def __iter__(self) -> Iterator[bytes]:
        iterator = self._context.run(iter, self._result)
        while True:
            try:
                chunk = self._context.run(next, iterator)
            except StopIteration:
                return
            yield chunk

    def close(self) -> None:
        close = getattr(self._result, "close", None)
        if close is not None:
            self._context.run(close)


class WorkflowTraceMiddleware:
    """WSGI middleware: I/O capture switch, inbound-baggage trust, and the request's trigger and user.

    - `trust_inbound_baggage`: honour a `workflow.capture_io` entry in the
      request's baggage (True), never (False, the default), or ask a callable
      `(RequestInfo) -> bool` per request (e.g. by `REMOTE_ADDR` or mTLS identity).
    - `allow_header`: whether `X-Workflow-Trace: true` may switch capture on:
      a bool or a callable like the above (default True).
    - `header_name`: the switch header (default `X-Workflow-Trace`).
    - `claims_getter(environ)`: where verified JWT claims are (default `default_claims`).
    - `user_claims`: the claims that name the user, first non-empty wins.
    - `trigger_type(RequestInfo)`: the execution's trigger type (default "METHOD /path").

    When the decision changes the `baggage` header, `environ["HTTP_BAGGAGE"]` is
    rewritten in place, so that layers inside see the same decision.
    """

    def __init__(
        self,
        app: WSGIApplication,
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

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        # A copy of the caller's context, never detached from: it is dropped with the response.
        context = contextvars.copy_context()
        result = context.run(self._call, environ, start_response)
        if isinstance(result, list | tuple):
            return result  # nothing of the application's runs while a materialised body is sent
        return _InContext(result, context)

    def _call(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        trigger = None
        try:
            info = _request_info(environ)
            decision = self.edge.decide(info)
            if decision.baggage_header is not None:
                if decision.baggage_header:
                    environ["HTTP_BAGGAGE"] = decision.baggage_header
                else:
                    environ.pop("HTTP_BAGGAGE", None)
            trigger = self.edge.trigger(info, lambda: self.claims_getter(environ))
        except Exception:
            report_once("the WSGI workflow middleware")
            decision = self.edge.fail_closed()
        otel_context.attach(decision.context)
        set_request_trigger(trigger)
        return self.app(environ, start_response)
