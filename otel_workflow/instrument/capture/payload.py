"""Serialisation of captured step input and output: any object to redacted JSON of bounded size.

`serialize_payload(obj)` never raises and always returns a JSON text that is
valid UTF-8 and at most `limit` bytes long (10 KiB by default):

1. `to_jsonable` turns the object into plain JSON values (dict, list, str,
   int, float, bool, None), applying the `Redactor` on the way, so that
   dataclasses, pydantic models and plain objects are redacted by field name
   exactly like dicts. How each kind of object becomes JSON:

   - dict and other mappings: objects (non-string keys become strings);
     dataclasses, pydantic models, attrs classes and named tuples: objects of
     their fields; other objects: an object of their public instance
     attributes, or their `repr()` when they have none.
   - list, tuple, deque: arrays; set and frozenset: arrays in a stable order.
   - bytes: the text when it is UTF-8, else `"base64:<data>"`.
   - datetime, date, time: ISO 8601; timedelta: seconds; Decimal, UUID,
     paths, complex: strings; enums: their value.
   - NaN and the infinities: the strings `"NaN"`, `"Infinity"`, `"-Infinity"`;
     integers beyond 64 bits: strings of their digits.
   - cycles: `"<cycle>"`; nesting deeper than `max_depth`: `"<max depth>"`;
     past `max_nodes` values: `"<too many values>"`; an object that raises
     while being read: `"<unserialisable TypeName>"`, never its `repr()`.

2. The JSON is written compactly. If it fits in `limit` bytes it is the
   payload, as is. If not, the payload is an envelope::

       {"_truncated": true, "original_bytes": 1048590, "preview": <JSON>}

   `original_bytes` is the size of the full (redacted) JSON; the key
   `"original_bytes_is_lower_bound": true` is added when the walk stopped at
   `max_nodes` and the real size is larger. `preview` is the same value cut
   to fit, still valid JSON of the same shape: a cut string ends with "…",
   a cut array ends with the string `"… N more items"`, a cut object ends with
   the key `"…"` whose value is `"N more keys"`. Cuts happen between
   characters and between values, never inside either.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import datetime as dt
import decimal
import enum
import json
import logging
import math
import pathlib
import sys
import types
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

from otel_workflow.instrument.capture.redaction import REDACTED, Redactor
from otel_workflow.model.utf8 import utf8

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "TRUNCATED_KEY",
    "PayloadRedactor",
    "serialize_payload",
    "to_jsonable",
]

logger = logging.getLogger("otel_workflow")

MAX_PAYLOAD_BYTES: Final = 10 * 1024
TRUNCATED_KEY: Final = "_truncated"
ELLIPSIS: Final = "…"
DEFAULT_MAX_DEPTH: Final = 32
DEFAULT_MAX_NODES: Final = 50_000
# The smallest limit for which the truncation envelope with an empty preview still fits.
MIN_LIMIT: Final = 96

CYCLE: Final = "<cycle>"
MAX_DEPTH: Final = "<max depth>"
TOO_MANY: Final = "<too many values>"

PayloadRedactor = Callable[[Any], Any]

_INT64 = 2**63
_PLAIN_CONTAINERS = frozenset({dict, list, tuple})
_NON_RECORDS = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.ModuleType, type)


def _type_name(obj: object) -> str:
    try:
        return type(obj).__qualname__
    except Exception:
        return "object"


def _unserialisable(obj: object) -> str:
    return f"<unserialisable {_type_name(obj)}>"


def _safe_repr(obj: object) -> str:
    try:
        text = repr(obj)
    except Exception:
        return _unserialisable(obj)
    return text if type(text) is str else _unserialisable(obj)


def _float(value: float) -> float | str:
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _pydantic_base() -> type | None:
    # Only a model of an imported pydantic can reach us: look it up rather than import it.
    module = sys.modules.get("pydantic")
    base = getattr(module, "BaseModel", None)
    return base if isinstance(base, type) else None


class _Walker:
    """One conversion to JSON values; holds the state that makes it safe on hostile input."""

    __slots__ = (
        "elided_bytes",
        "incomplete",
        "max_depth",
        "max_nodes",
        "nodes",
        "path",
        "redactor",
        "text_cap",
    )

    def __init__(self, redactor: Redactor | None, limit: int, max_depth: int, max_nodes: int) -> None:
        self.redactor = redactor
        self.max_depth = max_depth
        self.max_nodes = max_nodes
        # A payload keeps at most `limit` bytes, hence at most `limit` characters, of any one string,
        # and redaction can shorten the kept part by at most 2.5 times (25 characters of a grouped card
        # number become the 10 of the marker). So only the first 3 * limit characters of a string can
        # ever be stored; the rest is only measured, which bounds the work on huge strings.
        self.text_cap = 3 * limit
        self.nodes = 0
        self.elided_bytes = 0
        self.incomplete = False
        self.path: set[int] = set()

    def rewalk(self, obj: object) -> Any:
        """Convert again (a payload callback's result), keeping what was measured so far."""
        self.nodes = 0
        self.path.clear()
        return self.walk(obj, 0)

    def text(self, value: str) -> str:
        if type(value) is not str:
            value = str.__str__(value)  # a str subclass's own __str__ may raise or lie
        if len(value) > self.text_cap:
            tail = value[self.text_cap :]
            self.elided_bytes += len(json.dumps(tail, ensure_ascii=False).encode("utf-8", "replace")) - 2
            value = value[: self.text_cap]
        value = utf8(value)
        return self.redactor.scrub_text(value) if self.redactor is not None else value

    def integer(self, value: int) -> int | str:
        if self.redactor is not None and self.redactor.is_card_number(value):
            return REDACTED
        if -_INT64 <= value < _INT64:
            return value
        try:
            return self.text(str(value))
        except ValueError:  # more digits than int -> str allows
            return f"<int of {value.bit_length()} bits>"

    def key(self, key: object) -> str:
        if isinstance(key, str):
            return self.text(key)
        if key is None or isinstance(key, bool):
            return json.dumps(key)
        if isinstance(key, int):
            value = self.integer(key)
            return value if isinstance(value, str) else str(value)
        if isinstance(key, float):
            return str(_float(key)) if not math.isfinite(key) else repr(key)
        if isinstance(key, enum.Enum):
            return self.key(key.value)
        return self.text(_safe_repr(key))

    def walk(self, obj: object, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > self.max_nodes:
            self.incomplete = True
            return TOO_MANY
        kind = type(obj)
        # Exact-type checks first: they are the common case and the cheapest.
        if kind is str:
            return self.text(obj)  # type: ignore[arg-type]
        if obj is None or kind is bool:
            return obj
        if kind is int:
            return self.integer(obj)  # type: ignore[arg-type]
        if kind is float:
            return _float(obj)  # type: ignore[arg-type]
        try:
            return self._compound(obj, depth)
        except RecursionError:
            self.incomplete = True
            return MAX_DEPTH
        except Exception:
            # Never fall back to repr() here: the object failed half-way and its repr may hold secrets.
            return _unserialisable(obj)

    def _compound(self, obj: object, depth: int) -> Any:
        if type(obj) in _PLAIN_CONTAINERS:
            return self._nested(obj, depth)
        if isinstance(obj, enum.Enum):
            return self.walk(obj.value, depth)
        if isinstance(obj, int):  # subclasses; bool, which has none, was handled in walk()
            return self.integer(int(obj))
        if isinstance(obj, float):
            return _float(float(obj))
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, bytes | bytearray | memoryview):
            return self._bytes(bytes(obj))
        if isinstance(obj, dt.datetime | dt.date | dt.time):
            return obj.isoformat()
        if isinstance(obj, dt.timedelta):
            return obj.total_seconds()
        if isinstance(obj, decimal.Decimal | uuid.UUID | pathlib.PurePath | complex):
            return self.text(str(obj))
        if isinstance(obj, _NON_RECORDS):
            return self.text(_safe_repr(obj))
        if isinstance(obj, BaseException):
            return self.text(f"{_type_name(obj)}: {obj}")
        return self._nested(obj, depth)

    def _nested(self, obj: object, depth: int) -> Any:
        if depth >= self.max_depth:
            return MAX_DEPTH
        ident = id(obj)
        if ident in self.path:
            return CYCLE
        self.path.add(ident)
        try:
            return self._container(obj, depth + 1)
        finally:
            self.path.discard(ident)

    def _container(self, obj: object, depth: int) -> Any:
        kind = type(obj)
        if kind is dict:
            return self.mapping(obj.items(), depth)  # type: ignore[attr-defined]
        if kind is list or kind is tuple:
            return self.sequence(obj, depth)
        if isinstance(obj, Mapping):
            return self.mapping(obj.items(), depth)
        if isinstance(obj, tuple) and hasattr(obj, "_fields") and hasattr(obj, "_asdict"):
            return self.mapping(obj._asdict().items(), depth)  # a named tuple
        if isinstance(obj, list | tuple | collections.deque | range):
            return self.sequence(obj, depth)
        if isinstance(obj, set | frozenset):
            items = []
            for item in obj:
                items.append(self.walk(item, depth))
                if self.nodes > self.max_nodes:
                    self.incomplete = True
                    break
            # Sets have no order: sort by the JSON text so that equal sets give equal payloads.
            return sorted(items, key=lambda item: json.dumps(item, sort_keys=True, ensure_ascii=False))
        if dataclasses.is_dataclass(obj):
            return self.mapping(((f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)), depth)
        pydantic_base = _pydantic_base()
        if pydantic_base is not None and isinstance(obj, pydantic_base):
            # Iterating a model yields its (field, value) pairs, extras included, in pydantic 1 and 2.
            return self.mapping(iter(obj), depth)  # type: ignore[call-overload]
        attrs_fields = getattr(type(obj), "__attrs_attrs__", None)
        if attrs_fields is not None:
            return self.mapping(((a.name, getattr(obj, a.name)) for a in attrs_fields), depth)
        attributes = getattr(obj, "__dict__", None)
        if isinstance(attributes, dict):
            public = [(k, v) for k, v in attributes.items() if isinstance(k, str) and not k.startswith("_")]
            if public:
                return self.mapping(public, depth)
        return self.text(_safe_repr(obj))

    def mapping(self, items: Any, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        redactor = self.redactor
        for raw_key, value in items:
            key = self.key(raw_key)
            if redactor is not None and redactor.redact_field(key, value):
                self.nodes += 1
                out[key] = REDACTED
            else:
                out[key] = self.walk(value, depth)
            if self.nodes > self.max_nodes:
                self.incomplete = True
                break
        return out

    def sequence(self, items: Any, depth: int) -> list[Any]:
        redactor = self.redactor
        if redactor is not None and len(items) == 2 and isinstance(items[0], str | bytes):
            # A (name, value) pair, as in lists of HTTP headers: redact by the name like a mapping key.
            name = items[0] if isinstance(items[0], str) else items[0].decode("latin-1")
            if redactor.redact_field(self.text(name), items[1]):
                self.nodes += 1
                return [self.walk(items[0], depth), REDACTED]
        out: list[Any] = []
        for item in items:
            out.append(self.walk(item, depth))
            if self.nodes > self.max_nodes:
                self.incomplete = True
                break
        return out

    def _bytes(self, data: bytes) -> str:
        try:
            return self.text(data.decode("utf-8"))
        except UnicodeDecodeError:
            if len(data) > self.text_cap:  # base64 of the elided part is only measured
                self.elided_bytes += (len(data) - self.text_cap + 2) // 3 * 4
                data = data[: self.text_cap]
            return "base64:" + base64.b64encode(data).decode("ascii")


def to_jsonable(
    obj: object,
    *,
    redactor: Redactor | None = None,
    limit: int = MAX_PAYLOAD_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_nodes: int = DEFAULT_MAX_NODES,
) -> Any:
    """`obj` as plain JSON values (redacted with `redactor` when given); never raises.

    Strings longer than 3 * `limit` characters are shortened, since no payload of
    `limit` bytes can keep more of them.
    """
    return _Walker(redactor, limit, max_depth, max_nodes).walk(obj, 0)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _fit(value: Any, budget: int) -> tuple[str, bool] | None:
    """JSON text of `value` cut to at most `budget` UTF-8 bytes, and whether it is whole; None if no
    representation fits."""
    if isinstance(value, str):
        return _fit_text(value, budget)
    if isinstance(value, dict):
        return _fit_object(value, budget)
    if isinstance(value, list):
        return _fit_array(value, budget)
    text = _dumps(value)
    return (text, True) if _size(text) <= budget else None


def _fit_text(value: str, budget: int) -> tuple[str, bool] | None:
    whole = _dumps(value)
    if len(whole) <= budget and _size(whole) <= budget:
        return whole, True
    # Binary search for the longest prefix whose JSON, with the ellipsis, fits. Cutting the Python
    # string (code points) never cuts a UTF-8 sequence; each probe is at most `budget` characters.
    low, high = 0, min(len(value), budget)
    best: str | None = None
    while low <= high:
        middle = (low + high) // 2
        text = _dumps(value[:middle] + ELLIPSIS)
        if _size(text) <= budget:
            best = text
            low = middle + 1
        else:
            high = middle - 1
    return None if best is None else (best, False)


def _more(count: int, what: str) -> str:
    return f"{count} more {what}" if count != 1 else f"1 more {what[:-1]}"


def _fit_array(items: list[Any], budget: int) -> tuple[str, bool] | None:
    if budget < 2:
        return None
    parts: list[str] = []
    used = 2  # the brackets
    total = len(items)
    for index, item in enumerate(items):
        separator = 1 if parts else 0
        left = total - index
        # Keep room for the "… N more items" marker unless this is the last item.
        reserve = 0 if left == 1 else 1 + _size(_dumps(f"{ELLIPSIS} {_more(left, 'items')}"))
        room = budget - used - separator - reserve
        fitted = _fit(item, room) if room > 0 else None
        if fitted is None:
            break
        text, whole = fitted
        parts.append(text)
        used += separator + _size(text)
        if not whole:
            break
    else:
        return "[" + ",".join(parts) + "]", True
    marker = _dumps(f"{ELLIPSIS} {_more(total - len(parts), 'items')}")
    if used + (1 if parts else 0) + _size(marker) <= budget:
        parts.append(marker)
    return "[" + ",".join(parts) + "]", False


def _fit_object(members: dict[str, Any], budget: int) -> tuple[str, bool] | None:
    if budget < 2:
        return None
    parts: list[str] = []
    used = 2  # the braces
    total = len(members)
    for index, (key, value) in enumerate(members.items()):
        separator = 1 if parts else 0
        left = total - index
        reserve = 0 if left == 1 else 1 + _size(_dumps(ELLIPSIS) + ":" + _dumps(_more(left, "keys")))
        prefix = _dumps(key) + ":"
        room = budget - used - separator - reserve - _size(prefix)
        fitted = _fit(value, room) if room > 0 else None
        if fitted is None:
            break
        text, whole = fitted
        parts.append(prefix + text)
        used += separator + _size(prefix) + _size(text)
        if not whole:
            break
    else:
        return "{" + ",".join(parts) + "}", True
    marker = _dumps(ELLIPSIS) + ":" + _dumps(_more(total - len(parts), "keys"))
    if used + (1 if parts else 0) + _size(marker) <= budget:
        parts.append(marker)
    return "{" + ",".join(parts) + "}", False


def _envelope(value: Any, original_bytes: int, lower_bound: bool, limit: int) -> str:
    head = f'{{"{TRUNCATED_KEY}":true,"original_bytes":{original_bytes},'
    if lower_bound:
        head += '"original_bytes_is_lower_bound":true,'
    head += '"preview":'
    fitted = _fit(value, limit - _size(head) - 1)
    text = head + (fitted[0] if fitted is not None else "null") + "}"
    if _size(text) <= limit:
        return text
    minimal = f'{{"{TRUNCATED_KEY}":true}}'
    return minimal if _size(minimal) <= limit else "null"


def _apply_payload_redactor(value: Any, payload_redactor: PayloadRedactor, walker: _Walker) -> Any:
    try:
        result = payload_redactor(value)
    except Exception:
        logger.warning("otel-workflow: the payload redaction callback raised; the payload was withheld")
        return {"_redacted": True, "reason": "the payload redaction callback failed"}
    # The callback may return any object: make it JSON again, and redact it again, since it may have
    # added values that the built-in rules would hide.
    return walker.rewalk(result)


def serialize_payload(
    obj: object,
    *,
    redactor: Redactor | None = None,
    payload_redactor: PayloadRedactor | None = None,
    limit: int = MAX_PAYLOAD_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_nodes: int = DEFAULT_MAX_NODES,
) -> str:
    """`obj` as redacted JSON of at most `limit` UTF-8 bytes; never raises.

    `redactor` hides secrets while converting (None: nothing is redacted);
    `payload_redactor` then receives the whole converted value (plain dicts,
    lists and scalars) and returns the value to keep. Both run before the
    size limit is applied. See the module docstring for the format.
    """
    limit = max(limit, 4)  # "null"
    try:
        walker = _Walker(redactor, limit, max_depth, max_nodes)
        value = walker.walk(obj, 0)
        if payload_redactor is not None:
            value = _apply_payload_redactor(value, payload_redactor, walker)
        text = _dumps(value)
        size = _size(text)
        if size <= limit and not walker.incomplete:
            return text
        return _envelope(value, size + walker.elided_bytes, walker.incomplete, limit)
    except Exception:
        # Only a bug of ours gets here; the marker is still valid JSON and holds nothing of the payload.
        logger.exception("otel-workflow could not serialise a payload")
        return '{"_unserialisable":true}' if limit >= 24 else "null"
