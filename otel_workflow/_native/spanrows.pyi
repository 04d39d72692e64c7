"""Types of the C converter (`_native/spanrows.c`); `otel_workflow.ingest.convert` is its only caller."""

from collections.abc import Callable, Mapping
from typing import Any

class Unsupported(TypeError):
    """A span this module does not read: its class (args[0]) or a field it lacks."""

def configure(settings: Mapping[str, Any], rules: Mapping[str, object]) -> None: ...
def columns() -> tuple[
    tuple[tuple[str, str], ...], tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]
]: ...
def finished(
    spans: list[Any], types: set[type], describe_resource: Callable[[Any], tuple[str | None, str]]
) -> tuple[object, object, object, int, int, int]: ...
def stream(arrays: list[object], schema: object) -> object: ...
def owners(spans: list[Any]) -> list[tuple[str | None, bool] | None]: ...
def pack(
    arrays: list[object], columns: int, fd: int
) -> tuple[int, tuple[tuple[int, tuple[tuple[int, int], ...]], ...]] | None: ...
