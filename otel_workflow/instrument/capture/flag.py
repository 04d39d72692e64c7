"""The I/O capture switch: a W3C baggage entry that follows a request across services.

`capture_io()` turns capture on for the current context (and everything it
calls, in this process and, through the standard baggage propagator, in
downstream services). `io_capture_enabled()` reads the switch.

What happens when it is on is set process-wide by `configure_capture()` (a
`CapturePolicy`): payload size, redaction rules and the rate limit. The rate
limit is a token bucket of captured executions: an execution that starts with
the switch on takes one token (executions nested in it share it); when none is
left the execution runs without capture: the switch is off inside it, so no
step records anything, and the refusal is counted (`capture_refused_count()`)
and logged at most once a minute. Steps recorded outside any execution are not
rate-limited.

The HTTP middlewares (`otel_workflow.instrument.http.asgi`, `otel_workflow.instrument.http.wsgi`) set the
switch from a request header and publish the request's trigger
(`current_request_trigger()`), which `WorkflowTracer.execution()` uses when its
caller names no trigger.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry import baggage
from opentelemetry import context as otel_context
from opentelemetry.trace import Span

from otel_workflow.instrument.capture.payload import (
    MAX_PAYLOAD_BYTES,
    MIN_LIMIT,
    PayloadRedactor,
    serialize_payload,
)
from otel_workflow.instrument.capture.redaction import (
    DEFAULT_SECRET_KEYS,
    FieldRedactor,
    KeyPattern,
    Redactor,
)
from otel_workflow.instrument.scope import Closer, ReusableScope
from otel_workflow.model import conventions as cv

__all__ = [
    "CAPTURE_IO_BAGGAGE_KEY",
    "EXECUTION_INPUT_EVENT",
    "CapturePolicy",
    "CaptureRateLimiter",
    "RequestTrigger",
    "capture_io",
    "capture_limiter",
    "capture_policy",
    "capture_refused_count",
    "configure_capture",
    "current_request_trigger",
    "io_capture_enabled",
    "record_payload",
]

logger = logging.getLogger("otel_workflow")

CAPTURE_IO_BAGGAGE_KEY: Final = "workflow.capture_io"
#: The event that carries an execution's `trigger_data` (attribute `workflow.io.json`, like step I/O).
EXECUTION_INPUT_EVENT: Final = cv.EXECUTION_INPUT_EVENT


# Set in the context of an execution that holds a capture token, so nested executions do not take another.
_GRANTED = otel_context.create_key("otel_workflow.capture_granted")


def io_capture_enabled(context: otel_context.Context | None = None) -> bool:
    """True when the baggage of `context` (default: the current one) asks for I/O capture."""
    value = baggage.get_baggage(CAPTURE_IO_BAGGAGE_KEY, context)
    return isinstance(value, str) and value.strip().lower() == "true"


class capture_io(ReusableScope[None]):
    """Turn I/O capture on for the enclosed block; also `async with`, and a decorator for sync and async
    functions."""

    def _open_entry(self) -> tuple[None, Closer]:
        token = otel_context.attach(baggage.set_baggage(CAPTURE_IO_BAGGAGE_KEY, "true"))
        return None, lambda exc: otel_context.detach(token)

    def _fresh(self) -> capture_io:
        return capture_io()


# -- policy ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CapturePolicy:
    """What I/O capture does when the switch is on. Install one with `configure_capture()`.

    - `max_payload_bytes`: the size limit of one payload (UTF-8 bytes of JSON).
    - `redact_keys`: key patterns whose values are redacted (default
      `redaction.DEFAULT_SECRET_KEYS`); `extra_redact_keys`: patterns added to
      them. A str matches as a case- and separator-insensitive substring, a
      compiled regex is searched in the key.
    - `redact_card_numbers`: redact Luhn-valid card numbers by value, whatever the key.
    - `redact_field(key, value) -> bool`: the application's own per-field rule.
    - `redact_payload(value) -> value`: the application's own pass over the
      whole payload (plain JSON values, built-in redaction already applied),
      before the size limit. If it raises, the payload is withheld.
    - `captures_per_minute`: the rate limit of captured executions per process
      (None: unlimited; 0: never capture); `capture_burst`: how many may start
      at once (default: `captures_per_minute`, at least 1).
    """

    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    redact_keys: tuple[KeyPattern, ...] = DEFAULT_SECRET_KEYS
    extra_redact_keys: tuple[KeyPattern, ...] = ()
    redact_card_numbers: bool = True
    redact_field: FieldRedactor | None = None
    redact_payload: PayloadRedactor | None = None
    captures_per_minute: float | None = 10
    capture_burst: int | None = None

    def __post_init__(self) -> None:
        if self.max_payload_bytes < MIN_LIMIT:
            raise ValueError(f"max_payload_bytes must be at least {MIN_LIMIT}")
        if self.captures_per_minute is not None and not (
            math.isfinite(self.captures_per_minute) and self.captures_per_minute >= 0
        ):
            raise ValueError("captures_per_minute must be None or a finite number >= 0")
        if self.capture_burst is not None and self.capture_burst < 0:
            raise ValueError("capture_burst must be None or >= 0")
        for name in ("redact_keys", "extra_redact_keys"):
            value = getattr(self, name)
            if isinstance(value, str | re.Pattern):  # a lone pattern, not a tuple of them
                object.__setattr__(self, name, (value,))
            else:
                object.__setattr__(self, name, tuple(value))

    def redactor(self) -> Redactor:
        """A `Redactor` applying this policy's rules."""
        return Redactor(
            keys=self.redact_keys,
            extra_keys=self.extra_redact_keys,
            card_numbers=self.redact_card_numbers,
            field_redactor=self.redact_field,
        )


class CaptureRateLimiter:
    """A thread-safe token bucket of captured executions.

    Holds `burst` tokens, refilled at `per_minute` tokens a minute; each captured
    execution takes one. `refused` counts the executions that found none; the
    count is logged at most once per `log_interval_s`.
    """

    def __init__(
        self,
        per_minute: float | None,
        burst: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        log_interval_s: float = 60.0,
    ) -> None:
        self.per_minute = per_minute
        if per_minute is None:
            capacity = math.inf
        elif burst is not None:
            capacity = float(burst)
        else:
            capacity = float(max(1, math.ceil(per_minute))) if per_minute > 0 else 0.0
        self.capacity = capacity
        self._rate_per_s = 0.0 if per_minute is None else per_minute / 60.0
        self._clock = clock
        self._log_interval_s = log_interval_s
        self._lock = threading.Lock()
        self._tokens = capacity
        self._last = clock()
        self._granted = 0
        self._refused = 0
        self._refused_unlogged = 0
        self._last_log: float | None = None

    def try_acquire(self) -> bool:
        """Take a token if one is left; False (and counted) if not."""
        if self.per_minute is None:
            with self._lock:
                self._granted += 1
            return True
        log_count = 0
        with self._lock:
            now = self._clock()
            elapsed = max(0.0, now - self._last)
            self._last = now
            self._tokens = min(self.capacity, self._tokens + elapsed * self._rate_per_s)
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                self._granted += 1
                return True
            self._refused += 1
            self._refused_unlogged += 1
            if self._last_log is None or now - self._last_log >= self._log_interval_s:
                self._last_log = now
                log_count, self._refused_unlogged = self._refused_unlogged, 0
        if log_count:
            # Logged outside the lock: a slow handler must not hold up other requests.
            logger.warning(
                "otel-workflow: I/O capture refused for %d execution(s) by the rate limit "
                "(%s per minute); they ran without capture. %d refused since start.",
                log_count,
                self.per_minute,
                self._refused,
            )
        return False

    def reset(self) -> None:
        """Refill the bucket and zero the counts (for tests, or after an incident)."""
        with self._lock:
            self._tokens = self.capacity
            self._last = self._clock()
            self._granted = self._refused = self._refused_unlogged = 0
            self._last_log = None

    @property
    def refused(self) -> int:
        """Executions that asked for capture and ran without it."""
        return self._refused

    @property
    def granted(self) -> int:
        """Executions that ran with capture."""
        return self._granted


@dataclass(frozen=True)
class _Installed:
    policy: CapturePolicy
    redactor: Redactor = field(compare=False)
    limiter: CaptureRateLimiter = field(compare=False)


def _install(policy: CapturePolicy, previous: _Installed | None) -> _Installed:
    same_rate = previous is not None and (
        previous.policy.captures_per_minute == policy.captures_per_minute
        and previous.policy.capture_burst == policy.capture_burst
    )
    limiter = (
        previous.limiter
        if same_rate and previous is not None
        else CaptureRateLimiter(policy.captures_per_minute, policy.capture_burst)
    )
    return _Installed(policy, policy.redactor(), limiter)


class _Current:
    """The installed policy; replaced whole, so a reader always sees one consistent `_Installed`."""

    installed = _install(CapturePolicy(), None)
    lock = threading.Lock()


def configure_capture(policy: CapturePolicy | None = None, /, **options: Any) -> CapturePolicy:
    """Install the process-wide capture policy and return it.

    `configure_capture(captures_per_minute=30, extra_redact_keys=("ssn",))`
    starts from the defaults; `configure_capture(policy, **options)` from
    `policy`. `configure_capture()` restores the defaults. The rate limiter
    (and its counts) is replaced only when the rate settings change.
    """
    new = dataclasses.replace(policy or CapturePolicy(), **options)
    with _Current.lock:
        _Current.installed = _install(new, _Current.installed)
    return new


def capture_policy() -> CapturePolicy:
    """The process-wide capture policy in force."""
    return _Current.installed.policy


def capture_redactor() -> Redactor:
    """The `Redactor` of the process-wide capture policy (log records are redacted by it too)."""
    return _Current.installed.redactor


def capture_limiter() -> CaptureRateLimiter:
    """The process-wide rate limiter of captured executions."""
    return _Current.installed.limiter


def capture_refused_count() -> int:
    """Executions that asked for capture and ran without it because of the rate limit."""
    return _Current.installed.limiter.refused


# -- recording ------------------------------------------------------------------------------------


def _attribute_length_limit(span: Span) -> int | None:
    # The SDK cuts attribute values longer than its `max_attribute_length` (OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT,
    # in characters): a payload cut there would no longer be JSON, so stay within it.
    limits = getattr(span, "_limits", None)
    length = getattr(limits, "max_attribute_length", None)
    return length if isinstance(length, int) and length > 0 else None


def record_payload(span: Span, event_name: str, obj: object) -> None:
    """Attach `obj`, redacted and bounded, to `span` as event `event_name` with attribute `workflow.io.json`.

    Does not look at the capture switch: callers check `io_capture_enabled()` first.
    """
    if not span.is_recording():
        return
    state = _Current.installed
    policy = state.policy
    limit = policy.max_payload_bytes
    span_limit = _attribute_length_limit(span)
    if span_limit is not None:
        limit = min(limit, span_limit)
    payload = serialize_payload(
        obj, redactor=state.redactor, payload_redactor=policy.redact_payload, limit=limit
    )
    span.add_event(event_name, {cv.IO_JSON: payload})


def begin_execution_capture() -> tuple[bool, otel_context.Context | None]:
    """Decide capture for an execution starting now in the current context.

    Returns whether it captures, and a context to attach for its duration (None:
    keep the current one). A refused execution gets a context without the switch.
    """
    current = otel_context.get_current()
    if not io_capture_enabled(current):
        return False, None
    if otel_context.get_value(_GRANTED, current):
        return True, None  # nested in an execution that holds a token
    if _Current.installed.limiter.try_acquire():
        return True, otel_context.set_value(_GRANTED, True, current)
    return False, baggage.remove_baggage(CAPTURE_IO_BAGGAGE_KEY, current)


# -- the request's trigger, published by the HTTP middlewares --------------------------------------


class RequestTrigger:
    """The trigger of the HTTP request being served: `trigger_type` ("POST /orders") and the user.

    The user is read when first asked for, not when the request arrives, since the
    authentication layer that places the verified claims usually runs inside the
    middleware.
    """

    __slots__ = ("_user", "_user_getter", "trigger_type")

    def __init__(self, trigger_type: str | None, user_getter: Callable[[], str | None] | None = None) -> None:
        self.trigger_type = trigger_type
        self._user_getter = user_getter
        self._user: str | None = None

    @property
    def triggered_by(self) -> str | None:
        """The triggering user (a verified JWT claim), or None when there is none (yet)."""
        if self._user is None and self._user_getter is not None:
            try:
                self._user = self._user_getter()
            except Exception:
                logger.debug("otel-workflow: reading the request's user failed", exc_info=True)
                return None
        return self._user

    def __repr__(self) -> str:
        return f"RequestTrigger({self.trigger_type!r})"


_request_trigger: contextvars.ContextVar[RequestTrigger | None] = contextvars.ContextVar(
    "otel_workflow_request_trigger", default=None
)


def current_request_trigger() -> RequestTrigger | None:
    """The trigger of the HTTP request served in this context, set by the middleware; None outside one."""
    return _request_trigger.get()


def set_request_trigger(trigger: RequestTrigger | None) -> contextvars.Token[RequestTrigger | None]:
    """Publish `trigger` for this context (the middlewares' side); reset with `reset_request_trigger`."""
    return _request_trigger.set(trigger)


def reset_request_trigger(token: contextvars.Token[RequestTrigger | None]) -> None:
    _request_trigger.reset(token)
