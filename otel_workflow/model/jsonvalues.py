"""The one JSON encoding of what the read side returns: records and the values DuckDB hands back.

Used by the CLI's `--json` and the server's answers, so both print the same document for the same
rows: dataclasses as objects, datetimes as ISO 8601, durations (`timedelta`) as seconds, DECIMAL as a
number (text when not finite), BLOB as hex, NaN and infinities as null (JSON has neither).

`json_object` is the way back for the JSON attribute columns (`attributes`, `resource_attributes`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import date, time, timedelta
from decimal import Decimal
from typing import Any

import orjson

__all__ = ["dumps", "json_object"]


def dumps(data: Any, *, indent: bool = False) -> bytes:
    """`data` as UTF-8 JSON; `indent`: two spaces per level, for people."""
    option = orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if indent else 0)
    try:
        return orjson.dumps(data, default=_default, option=option)
    except (TypeError, orjson.JSONEncodeError):
        # Beyond orjson: integers over 64 bits (HUGEINT) and the like. The standard library takes them.
        text = json.dumps(
            _finite(data),
            default=_stdlib_default,
            ensure_ascii=False,
            allow_nan=False,
            indent=2 if indent else None,
        )
        return text.encode("utf-8")


def json_object(text: str | None) -> dict[str, Any]:
    """A JSON column's text as a dict: `{}` for NULL or empty, `{"value": v}` for a JSON value that is not
    an object (the columns hold objects; another writer of the file may not have kept to that)."""
    if not text:
        return {}
    value = json.loads(text)
    return value if isinstance(value, dict) else {"value": value}


def _default(value: Any) -> Any:
    """What orjson cannot serialise by itself."""
    if isinstance(value, Decimal):
        return float(value) if value.is_finite() else str(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, set | frozenset):
        return list(value)
    return str(value)


def _stdlib_default(value: Any) -> Any:
    if isinstance(value, date | time):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _finite({name: getattr(value, name) for name in value.__dataclass_fields__})
    return _finite(_default(value))


def _finite(value: Any) -> Any:
    """`value` with NaN and infinities as None, for the standard library's encoder."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
