"""Redaction rules: secret keys in any nesting and any container, card numbers by value, user rules."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_workflow.instrument.capture.payload import serialize_payload
from otel_workflow.instrument.capture.redaction import DEFAULT_SECRET_KEYS, REDACTED, Redactor, luhn_valid

SECRET = "s3cr3t-value-Zq9"
CARDS = [
    "4111111111111111",  # Visa
    "5500 0000 0000 0004",  # Mastercard, grouped
    "3782-822463-10005",  # Amex, 4-6-5
    "6011000990139424",  # Discover
    "4222222222222",  # 13 digits
    "6304000000000000018",  # 19 digits
]


def redacted(value: Any, redactor: Redactor | None = None) -> Any:
    return json.loads(serialize_payload(value, redactor=redactor or Redactor()))


@pytest.mark.parametrize(
    "key",
    [
        "password", "PASSWORD", "user_password", "passwd", "pwd", "secret", "client_secret",
        "token", "access_token", "refresh-token", "api_key", "apikey", "api-key", "API_KEY", "X-Api-Key",
        "authorization", "Proxy-Authorization", "cookie", "Set-Cookie", "session", "sessionId",
        "private_key", "privateKey", "credit_card", "creditCardNumber", "card_number", "cvv",
    ],
)  # fmt: skip
def test_secret_keys_are_redacted_case_and_separator_insensitively(key: str) -> None:
    assert redacted({key: SECRET}) == {key: REDACTED}


@pytest.mark.parametrize("key", ["name", "email", "amount", "order_id", "status", "keyboard", "author"])
def test_ordinary_keys_are_kept(key: str) -> None:
    assert redacted({key: "v"}) == {key: "v"}


@dataclasses.dataclass
class Credentials:
    username: str
    password: str


class Connection:
    def __init__(self) -> None:
        self.host = "db"
        self.auth_token = SECRET


def test_secrets_are_found_in_every_kind_of_nesting() -> None:
    value = {
        "level1": {"level2": [{"level3": {"Authorization": f"Bearer {SECRET}"}}]},
        "list_of_pairs": [("cookie", SECRET), ("accept", "json")],
        "bytes_pairs": [(b"x-api-key", SECRET.encode())],
        "dataclass": Credentials("al", SECRET),
        "object": Connection(),
        "tuple": ({"secret": SECRET},),
        # A whole container under a secret key goes, not just its strings.
        "session": {"id": SECRET, "user": "al"},
    }
    out = redacted(value)
    assert out == {
        "level1": {"level2": [{"level3": {"Authorization": REDACTED}}]},
        "list_of_pairs": [["cookie", REDACTED], ["accept", "json"]],
        "bytes_pairs": [["x-api-key", REDACTED]],
        "dataclass": {"username": "al", "password": REDACTED},
        "object": {"host": "db", "auth_token": REDACTED},
        "tuple": [{"secret": REDACTED}],
        "session": REDACTED,
    }
    assert SECRET not in json.dumps(out)


@pytest.mark.parametrize("card", CARDS)
def test_card_numbers_are_redacted_by_value_whatever_the_key(card: str) -> None:
    assert redacted({"note": card}) == {"note": REDACTED}
    assert redacted({"note": f"charged {card}, thanks"}) == {"note": f"charged {REDACTED}, thanks"}
    assert redacted([int(card.replace(" ", "").replace("-", ""))]) == [REDACTED]


@pytest.mark.parametrize(
    "text",
    [
        "4111111111111112",  # fails the Luhn check
        "order 123456789012",  # 12 digits
        "41111111111111111111",  # 20 digits: not a card
        "2024-05-06 12:00:00",
        "12345678-1234-5678-1234-567812345678",  # a UUID made of digits
        "sha 4111111111111111abc",  # glued into a longer token
        "1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6",  # single digits are no card layout
    ],
)
def test_other_numbers_are_kept(text: str) -> None:
    assert redacted({"note": text}) == {"note": text}


def test_a_card_beside_other_numbers_is_still_found() -> None:
    assert redacted("2024-05-06 4111 1111 1111 1111 exp 12/29") == f"2024-05-06 {REDACTED} exp 12/29"


def test_the_marker_reveals_nothing_of_the_secret() -> None:
    short, long = redacted({"token": "ab"}), redacted({"token": "x" * 500})
    assert short == long == {"token": REDACTED}
    assert redacted({"token": 12345}) == {"token": REDACTED}
    assert redacted({"token": {"nested": [1, 2]}}) == {"token": REDACTED}


def test_users_add_patterns_and_regexes_and_replace_the_defaults() -> None:
    redactor = Redactor(extra_keys=("ssn", re.compile(r"^x-internal-")))
    out = redacted({"SSN": "1", "user_ssn": "2", "x-internal-id": "3", "internal": "4"}, redactor)
    assert out == {"SSN": REDACTED, "user_ssn": REDACTED, "x-internal-id": REDACTED, "internal": "4"}
    only_mine = Redactor(keys=("pin",), card_numbers=False)
    assert redacted({"password": "p", "pin": "1", "card": CARDS[0]}, only_mine) == {
        "password": "p",
        "pin": REDACTED,
        "card": CARDS[0],
    }
    assert "password" in DEFAULT_SECRET_KEYS


def test_a_field_callback_decides_per_key_and_fails_closed() -> None:
    calls: list[tuple[str, Any]] = []

    def rule(key: str, value: Any) -> bool:
        calls.append((key, value))
        if key == "boom":
            raise RuntimeError("bug")
        return isinstance(value, str) and value.startswith("sk-")

    value = {"a": "sk-live-1", "b": "public", "boom": "x", "n": {"deep": "sk-2"}}
    out = redacted(value, Redactor(field_redactor=rule))
    assert out == {"a": REDACTED, "b": "public", "boom": REDACTED, "n": {"deep": REDACTED}}
    assert ("b", "public") in calls


def test_luhn() -> None:
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")
    assert all(luhn_valid(c.replace(" ", "").replace("-", "")) for c in CARDS)


def _luhn_complete(prefix: str) -> str:
    for check in "0123456789":
        if luhn_valid(prefix + check):
            return prefix + check
    raise AssertionError(prefix)


@settings(max_examples=100, deadline=None)
@given(
    body=st.text(alphabet="0123456789", min_size=12, max_size=18).filter(lambda s: s[0] != "0"),
    before=st.sampled_from(["", " ", "card: ", "(", "\n"]),
    after=st.sampled_from(["", " ", ".", ")", " exp"]),
)
def test_any_luhn_valid_card_in_text_is_redacted(body: str, before: str, after: str) -> None:
    card = _luhn_complete(body)
    out = Redactor().scrub_text(f"{before}{card}{after}")
    assert card not in out
    assert out == f"{before}{REDACTED}{after}"
