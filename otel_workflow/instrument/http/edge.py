"""What the ASGI and WSGI middlewares share: the capture decision for one request, and its trigger.

For each request the middleware builds a `RequestInfo` and asks `HttpEdge.decide`:

1. Inbound baggage (the W3C `baggage` header) is read with the standard
   `W3CBaggagePropagator`; `traceparent` is never touched, so the middleware
   does not re-parent anything whether or not the OpenTelemetry ASGI/WSGI
   instrumentation runs around it.
2. An inbound `workflow.capture_io` entry is dropped unless
   `trust_inbound_baggage` says the caller is trusted (False by default: the
   header can be sent by anyone). It is dropped from the context, where an outer
   OpenTelemetry middleware may already have put it, and from the `baggage`
   header passed on, so that no inner layer reads it again.
3. `X-Workflow-Trace: true` turns capture on when `allow_header` allows it
   (by default it does); the `baggage` header passed on then carries the flag
   too, so an OpenTelemetry middleware placed inside this one agrees.
4. The request's trigger ("METHOD /path") and user (the first non-empty of the
   JWT claims `email`, `sub`, `user_id`, `preferred_username`, `name`, read
   from claims that an authentication layer has verified and placed in the
   ASGI scope / WSGI environ) are published for `WorkflowTracer.execution()`.

`trust_inbound_baggage` and `allow_header` are a bool or a callable receiving
the `RequestInfo`; a callable that raises counts as False.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote_plus

from opentelemetry import baggage
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator

from otel_workflow.instrument.capture.flag import CAPTURE_IO_BAGGAGE_KEY, RequestTrigger, io_capture_enabled

__all__ = [
    "DEFAULT_HEADER",
    "USER_CLAIMS",
    "EdgeDecision",
    "HttpEdge",
    "RequestInfo",
    "RequestPolicy",
    "user_from_claims",
]

logger = logging.getLogger("otel_workflow")

DEFAULT_HEADER: Final = "X-Workflow-Trace"
#: The JWT claims that name the triggering user, in order of preference.
USER_CLAIMS: Final[tuple[str, ...]] = ("email", "sub", "user_id", "preferred_username", "name")
BAGGAGE_HEADER: Final = "baggage"

_PROPAGATOR = W3CBaggagePropagator()
_FLAG_MEMBER = f"{CAPTURE_IO_BAGGAGE_KEY}=true"


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What the policy callables see of a request.

    `headers`: lower-case names; a repeated header's values joined by ",".
    `client`: the peer address (not a forwarded one). `raw`: the ASGI scope or
    the WSGI environ, for anything else (TLS client certificate, route...).
    """

    method: str
    path: str
    headers: Mapping[str, str]
    client: str | None
    raw: Any


RequestPolicy = bool | Callable[[RequestInfo], bool]
ClaimsGetter = Callable[[Any], Mapping[str, Any] | None]
TriggerNamer = Callable[[RequestInfo], str | None]


@dataclass(frozen=True, slots=True)
class EdgeDecision:
    """The outcome for one request: the context to run it in, and the `baggage` header to pass on."""

    context: otel_context.Context
    capture: bool
    # The `baggage` header the inner application should see: None to leave the request as it came,
    # "" to remove the header.
    baggage_header: str | None


def user_from_claims(claims: Mapping[str, Any] | None, names: Sequence[str] = USER_CLAIMS) -> str | None:
    """The first non-empty of the claims `names` (strings and numbers only), or None."""
    if not claims:
        return None
    for name in names:
        value = claims.get(name)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, str | int):
            text = str(value).strip()
            if text:
                return text
    return None


_reported: set[str] = set()
_reported_lock = threading.Lock()


def report_once(what: str) -> None:
    """Log the exception being handled, the first time `what` fails in this process."""
    with _reported_lock:
        if what in _reported:
            return
        _reported.add(what)
    logger.exception("otel-workflow: %s failed; treated as 'no' (further failures are not logged)", what)


def _ask(policy: RequestPolicy, info: RequestInfo, what: str) -> bool:
    if isinstance(policy, bool):
        return policy
    try:
        return bool(policy(info))
    except Exception:
        report_once(what)
        return False


def _member_key(member: str) -> str:
    # Decoded as the propagator decodes it, so an encoded key (`workflow%2Ecapture_io`) is still found.
    return unquote_plus(member.split("=", 1)[0]).strip(" \t")


def _rebuild(header: str, capture: bool) -> str:
    members = [m.strip(" \t") for m in header.split(",")]
    kept = [m for m in members if m and _member_key(m) != CAPTURE_IO_BAGGAGE_KEY]
    if capture:
        kept.append(_FLAG_MEMBER)
    return ",".join(kept)


class HttpEdge:
    """The per-request decision shared by the ASGI and WSGI middlewares (see the module docstring)."""

    def __init__(
        self,
        *,
        trust_inbound_baggage: RequestPolicy = False,
        allow_header: RequestPolicy = True,
        header_name: str = DEFAULT_HEADER,
        user_claims: Sequence[str] = USER_CLAIMS,
        trigger_type: TriggerNamer | None = None,
    ) -> None:
        self.trust_inbound_baggage = trust_inbound_baggage
        self.allow_header = allow_header
        self.header_name = header_name.lower()
        self.user_claims = tuple(user_claims)
        self.trigger_type = trigger_type

    def decide(self, info: RequestInfo, base: otel_context.Context | None = None) -> EdgeDecision:
        """The context and `baggage` header for request `info`, starting from `base` (default: current)."""
        context = otel_context.get_current() if base is None else base
        header = info.headers.get(BAGGAGE_HEADER)
        inbound_flag = False
        if header:
            # Extract into an empty context first, to know what the request itself carries.
            carried = baggage.get_all(_PROPAGATOR.extract({BAGGAGE_HEADER: header}, otel_context.Context()))
            inbound_flag = CAPTURE_IO_BAGGAGE_KEY in carried or any(
                _member_key(m) == CAPTURE_IO_BAGGAGE_KEY for m in header.split(",")
            )
            trusted = inbound_flag and _ask(self.trust_inbound_baggage, info, "trust_inbound_baggage")
            for name, value in carried.items():
                if name != CAPTURE_IO_BAGGAGE_KEY or trusted:
                    context = baggage.set_baggage(name, value, context)
            if inbound_flag and not trusted:
                # Also drops what an OpenTelemetry middleware around this one extracted from the header.
                context = baggage.remove_baggage(CAPTURE_IO_BAGGAGE_KEY, context)
        switch = info.headers.get(self.header_name)
        if (
            switch is not None
            and switch.strip().lower() == "true"
            and _ask(self.allow_header, info, "allow_header")
        ):
            context = baggage.set_baggage(CAPTURE_IO_BAGGAGE_KEY, "true", context)
        capture = io_capture_enabled(context)
        rewritten: str | None = None
        if inbound_flag or capture:
            new = _rebuild(header or "", capture)
            if new != (header or ""):
                rewritten = new
        return EdgeDecision(context=context, capture=capture, baggage_header=rewritten)

    def fail_closed(self, base: otel_context.Context | None = None) -> EdgeDecision:
        """The decision when deciding failed: run the request with capture off."""
        context = otel_context.get_current() if base is None else base
        return EdgeDecision(baggage.remove_baggage(CAPTURE_IO_BAGGAGE_KEY, context), False, None)

    def trigger(self, info: RequestInfo, claims: Callable[[], Mapping[str, Any] | None]) -> RequestTrigger:
        """The request's trigger; the user is read from `claims()` when an execution first asks."""
        trigger_type: str | None
        if self.trigger_type is None:
            trigger_type = f"{info.method} {info.path}"
        else:
            try:
                trigger_type = self.trigger_type(info)
            except Exception:
                report_once("trigger_type")
                trigger_type = None
        names = self.user_claims
        return RequestTrigger(trigger_type, lambda: user_from_claims(claims(), names))
