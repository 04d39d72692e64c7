"""`ReusableScope`: a context manager for `with` and `async with` that is also a decorator.

Open entries are kept in a context variable, not on the object, so one scope
object entered by overlapping asyncio tasks or threads (a shared decorator, or
`validate = wf.step("validate")` used in several tasks) closes each task's own
entry. A decorated function gets a fresh scope per call. Closing an entry resets
the variable to what it was before the entry (a context keeps every variable
ever set in it: a scope object per execution would otherwise stay in the
thread's context for good).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, TypeVar

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

Closer = Callable[[BaseException | None], None]
# An open entry: its closer, and the token that resets the variable to before the entry.
_Entry = tuple[Closer, contextvars.Token[Any]]


class ReusableScope(Generic[T]):
    """Subclasses say how to open one entry (`_open_entry`) and how to make a fresh scope (`_fresh`)."""

    def __init__(self) -> None:
        self._entries: contextvars.ContextVar[tuple[_Entry, ...]] = contextvars.ContextVar(
            "otel_workflow_scope_entries", default=()
        )

    def _open_entry(self) -> tuple[T, Closer]:
        """Enter once: the value of `as`, and the function that closes this entry given the exception."""
        raise NotImplementedError

    def _fresh(self) -> ReusableScope[T]:
        """A new scope with the same arguments, for one decorated call."""
        raise NotImplementedError

    def __enter__(self) -> T:
        value, close = self._open_entry()
        entries = self._entries
        before = entries.get()
        token = entries.set(before)  # only for its memory of the state before this entry
        entries.set((*before, (close, token)))
        return value

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entries = self._entries.get()
        close, token = entries[-1]
        self._entries.reset(token)
        close(exc)

    async def __aenter__(self) -> T:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, function: F) -> F:
        """Decorate a sync or async function: each call runs in a fresh scope."""
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with self._fresh():
                    return await function(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self._fresh():
                return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]
