"""Types of the processor's C hooks (`spanstart.c`); `otel_workflow.sdk.processor` is their only caller."""

from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any

class Hooks:
    evicted: int
    def __init__(
        self,
        live: dict[int, tuple[str | None, Any, bool]],
        max_live: int,
        span_types: tuple[type, ...],
        readable_type: type,
        bounded_type: type,
        span_key: str,
        current_context: ContextVar[Any] | None,
        rules: Mapping[str, object],
        fallback: Any,
        number_step: Callable[[str], int],
        forget: Callable[[str], None],
        live_rows: Any,
        recognised_parent: Callable[[Any], tuple[str | None, Any, bool] | None],
        on_failure: Callable[[str, BaseException | None], None],
    ) -> None: ...
    def on_start(self, span: Any, parent_context: Any = None) -> None: ...
    def on_end(self, span: Any) -> None: ...
