"""The I/O capture switch: a W3C baggage entry that follows a request across services.

`capture_io()` turns capture on for the current context (and everything it
calls, in this process and, through the standard baggage propagator, in
downstream services). `io_capture_enabled()` reads the switch.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, TypeVar

from opentelemetry import baggage
from opentelemetry import context as otel_context

CAPTURE_IO_BAGGAGE_KEY: Final = "workflow.capture_io"

F = TypeVar("F", bound=Callable[..., Any])


def io_capture_enabled(context: otel_context.Context | None = None) -> bool:
    """True when the baggage of `context` (default: the current one) asks for I/O capture."""
    value = baggage.get_baggage(CAPTURE_IO_BAGGAGE_KEY, context)
    return isinstance(value, str) and value.strip().lower() == "true"


class capture_io:
    """Turn I/O capture on for the enclosed block; also a decorator for sync and async functions."""

    def __init__(self) -> None:
        self._tokens: list[object] = []

    def __enter__(self) -> capture_io:
        ctx = baggage.set_baggage(CAPTURE_IO_BAGGAGE_KEY, "true")
        self._tokens.append(otel_context.attach(ctx))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        otel_context.detach(self._tokens.pop())  # type: ignore[arg-type]

    async def __aenter__(self) -> capture_io:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, function: F) -> F:
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with capture_io():
                    return await function(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with capture_io():
                return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]
