"""Serialisation of captured payloads: any object becomes valid, bounded JSON, and it never raises."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import decimal
import enum
import json
import math
import pathlib
import time
import uuid
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_workflow.instrument.capture.payload import MAX_PAYLOAD_BYTES, serialize_payload, to_jsonable
from otel_workflow.instrument.capture.redaction import Redactor


def load(text: str, limit: int = MAX_PAYLOAD_BYTES) -> Any:
    """Assert the payload contract and return the decoded value."""
    assert isinstance(text, str)
    encoded = text.encode("utf-8")  # raises on a lone surrogate: the payload must be valid UTF-8
    assert len(encoded) <= limit, len(encoded)
    return json.loads(text)


class Colour(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Point(NamedTuple):
    x: int
    y: int


@dataclasses.dataclass
class Address:
    city: str
    zip_code: str


@dataclasses.dataclass
class Customer:
    name: str
    address: Address
    tags: set[str]


class Plain:
    def __init__(self) -> None:
        self.visible = 1
        self._hidden = 2


class Unprintable:
    __slots__ = ()

    def __repr__(self) -> str:
        raise RuntimeError("repr fails")

    def __str__(self) -> str:
        raise RuntimeError("str fails")


class HostileMapping(dict[str, Any]):
    def items(self) -> Any:
        raise RuntimeError("items fails")


class LyingStr(str):
    def __str__(self) -> str:
        raise RuntimeError("str fails")


def test_common_python_values_become_natural_json() -> None:
    value = {
        "when": dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC),
        "day": dt.date(2024, 5, 6),
        "wait": dt.timedelta(seconds=1.5),
        "price": decimal.Decimal("19.90"),
        "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "path": pathlib.PurePosixPath("/tmp/x"),
        "colour": Colour.RED,
        "level": Level.HIGH,
        "point": Point(1, 2),
        "tuple": (1, "a"),
        "deque": collections.deque([1, 2]),
        "set": {3, 1, 2},
        "frozen": frozenset({"b", "a"}),
        "text": b"plain text",
        "binary": b"\xff\xfe\x00",
        "customer": Customer("Ann", Address("Oslo", "0150"), {"vip"}),
        "plain": Plain(),
        7: "int key",
        None: "none key",
        "big": 2**70,
        "nan": math.nan,
        "inf": math.inf,
        "ninf": -math.inf,
    }
    assert load(serialize_payload(value)) == {
        "when": "2024-05-06T07:08:09.123456+00:00",
        "day": "2024-05-06",
        "wait": 1.5,
        "price": "19.90",
        "id": "12345678-1234-5678-1234-567812345678",
        "path": "/tmp/x",
        "colour": "red",
        "level": 3,
        "point": {"x": 1, "y": 2},
        "tuple": [1, "a"],
        "deque": [1, 2],
        "set": [1, 2, 3],
        "frozen": ["a", "b"],
        "text": "plain text",
        "binary": "base64://4A",
        "customer": {"name": "Ann", "address": {"city": "Oslo", "zip_code": "0150"}, "tags": ["vip"]},
        "plain": {"visible": 1},
        "7": "int key",
        "null": "none key",
        "big": str(2**70),
        "nan": "NaN",
        "inf": "Infinity",
        "ninf": "-Infinity",
    }


def test_hostile_objects_become_markers_not_exceptions() -> None:
    cycle: list[Any] = [1]
    cycle.append(cycle)
    loop: dict[str, Any] = {"name": "loop"}
    loop["self"] = loop
    deep: Any = "bottom"
    for _ in range(200):
        deep = [deep]
    value = {
        "unprintable": Unprintable(),
        "mapping": HostileMapping(a=1),
        "lying": LyingStr("still text"),
        "cycle": cycle,
        "loop": loop,
        "deep": deep,
        "huge_int": 10**5000,
        "surrogate": "a\ud800b",
        "exception": ValueError("bad"),
        "function": len,
        "class": Plain,
    }
    out = load(serialize_payload(value))
    assert out["unprintable"] == "<unserialisable Unprintable>"
    assert out["mapping"] == "<unserialisable HostileMapping>"
    assert out["lying"] == "still text"
    assert out["cycle"] == [1, "<cycle>"]
    assert out["loop"] == {"name": "loop", "self": "<cycle>"}
    assert "<max depth>" in json.dumps(out["deep"])
    assert out["huge_int"] == "<int of 16610 bits>"
    assert out["surrogate"] == "a?b"
    assert out["exception"] == "ValueError: bad"
    assert out["function"] == "<built-in function len>"
    assert out["class"].startswith("<class ")


def test_shared_references_are_not_cycles() -> None:
    shared = {"k": 1}
    assert load(serialize_payload([shared, shared])) == [{"k": 1}, {"k": 1}]


def test_pydantic_models_are_objects_of_their_fields() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Login(pydantic.BaseModel, extra="allow"):  # type: ignore[misc, name-defined, call-arg]
        user: str
        password: str
        pin: pydantic.SecretStr  # type: ignore[name-defined]

    login = Login(user="al", password="pw", pin="9876", extra_field=1)
    out = load(serialize_payload({"login": login}, redactor=Redactor()))
    assert out == {
        "login": {"user": "al", "password": "[REDACTED]", "pin": "SecretStr('**********')", "extra_field": 1}
    }


def test_small_payloads_are_kept_whole() -> None:
    value = {"a": [1, 2, 3], "b": "é" * 100}
    assert serialize_payload(value) == json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def test_truncation_envelope_keeps_the_shape_and_marks_every_cut() -> None:
    value = {"items": [{"id": i, "name": f"item {i}"} for i in range(2000)], "tail": "never reached"}
    text = serialize_payload(value)
    out = load(text)
    assert out["_truncated"] is True
    assert out["original_bytes"] == len(json.dumps(value, separators=(",", ":")).encode())
    items = out["preview"]["items"]
    assert items[0] == {"id": 0, "name": "item 0"}
    assert isinstance(items[-1], str) and items[-1].startswith("… ") and items[-1].endswith("more items")
    kept = len(items) - 1
    assert items[-1] == f"… {2000 - kept} more items"
    assert out["preview"]["…"] == "1 more key"
    assert len(text.encode()) > 9 * 1024  # the preview fills the room it has


@pytest.mark.parametrize("limit", [96, 200, 1000, 4096])
def test_any_limit_is_respected(limit: int) -> None:
    value = {"k" * 300: "v" * 300, "list": list(range(500)), "text": "€" * 5000}
    load(serialize_payload(value, limit=limit), limit)


def test_a_string_is_never_cut_inside_a_character_or_an_escape() -> None:
    for unit in ("€", "🎉", '"', "\\", "\n", "\x00", "a"):
        for limit in range(96, 140):
            out = load(serialize_payload(unit * 5000, limit=limit), limit)
            assert set(out["preview"][:-1]) <= {unit}


def test_huge_payloads_are_fast_enough() -> None:
    cases = [
        "x" * 5_000_000,
        ["€" * 100] * 20_000,
        {str(i): i for i in range(100_000)},
        b"\xff" * 2_000_000,
    ]
    for value in cases:
        started = time.perf_counter()
        load(serialize_payload(value, redactor=Redactor()))
        assert time.perf_counter() - started < 2.0, type(value)


def test_to_jsonable_applies_the_redactor() -> None:
    assert to_jsonable({"token": "t", "n": 1}, redactor=Redactor()) == {"token": "[REDACTED]", "n": 1}
    assert to_jsonable({"token": "t"}) == {"token": "t"}


# -- property-based: hostile payloads -----------------------------------------------------------------

_any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=300)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    _any_text,
    st.binary(max_size=200),
    st.datetimes(),
    st.decimals(allow_nan=True),
    st.uuids(),
    st.builds(Unprintable),
    st.builds(Plain),
)
_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=8),
        st.lists(children, max_size=8).map(tuple),
        st.dictionaries(st.one_of(_any_text, st.integers(), st.none(), st.booleans()), children, max_size=8),
        st.frozensets(st.one_of(st.integers(), st.text(max_size=20)), max_size=8),
        st.builds(Address, city=_any_text, zip_code=_any_text),
    ),
    max_leaves=60,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_values, limit=st.sampled_from([96, 300, 2048, MAX_PAYLOAD_BYTES]), redact=st.booleans())
def test_serialisation_never_raises_and_always_yields_valid_bounded_json(
    value: Any, limit: int, redact: bool
) -> None:
    load(serialize_payload(value, limit=limit, redactor=Redactor() if redact else None), limit)


@settings(max_examples=60, deadline=None)
@given(value=_values, copies=st.integers(min_value=1, max_value=400))
def test_cycles_and_repetition_stay_within_the_limit(value: Any, copies: int) -> None:
    container: list[Any] = [value] * copies
    container.append(container)
    load(serialize_payload({"data": container, "again": container}))
