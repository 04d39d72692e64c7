"""Redaction of secrets in captured step input and output.

A `Redactor` decides, for every mapping key (dict keys, dataclass and pydantic
fields, object attributes) whether the value under it is a secret, and finds
card numbers in text and integers whatever their key. `payload.serialize_payload`
applies it while it turns an object into JSON, so nothing secret reaches the
span, and so no exporter (DuckDB, OTLP, console) ever sees it.

Rules, in order:

1. Key patterns. A plain string pattern matches when it occurs in the key,
   compared case-insensitively and ignoring `_`, `-`, `.` and white space (so
   `api_key` matches `API-Key`, `x-api-key` and `apikey`). A compiled regular
   expression is searched in the key as it is. The defaults are
   `DEFAULT_SECRET_KEYS`.
2. The user's field callback, `(key, value) -> bool`: True redacts the value.
3. Credentials by their shape anywhere in text: `Bearer <token>` and `Basic <credentials>` (the
   value after the scheme is replaced) and JSON Web Tokens.
4. Card numbers anywhere: 13 to 19 digits, alone or in groups of three or more
   digits separated by single spaces or dashes, not part of a longer number or
   of a token glued to letters (an id, a UUID, a hash), that pass the Luhn
   check. In text the number itself is replaced; an integer that is one
   becomes the marker.

A redacted value becomes the string `REDACTED` ("[REDACTED]"): it says nothing
of the secret, not even its length or type. A callback that raises counts as
"redact" (fail closed).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any, Final

__all__ = [
    "DEFAULT_SECRET_KEYS",
    "REDACTED",
    "FieldRedactor",
    "KeyPattern",
    "Redactor",
    "luhn_valid",
]

logger = logging.getLogger("otel_workflow")

REDACTED: Final = "[REDACTED]"

#: Key fragments whose values are redacted by default (see the module docstring for how they match).
DEFAULT_SECRET_KEYS: Final[tuple[str, ...]] = (
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "secret",
    "token",
    "api_key",
    "access_key",
    "authorization",
    "credential",
    "cookie",
    "session",
    "private_key",
    "credit_card",
    "card_number",
    "cc_number",
    "cvv",
    "cvc",
    "jwt",
    "bearer",
)

KeyPattern = str | re.Pattern[str]
FieldRedactor = Callable[[str, Any], bool]

_SEPARATORS = re.compile(r"[\s_.\-]+")
# A candidate: at least 13 digits, with at most one space or dash between two digits. Greedy, so each
# match is a whole run; the windows inside it are checked in Python (`_card_spans`).
# Credentials by their shape, whatever their key: an HTTP authorization value (`Bearer <token>`, `Basic
# <base64>`) and a JSON Web Token (three base64url parts, the first a JSON object: `eyJ`).
_SCHEME_TOKEN = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9\-._~+/]{8,}=*")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
_TOKEN_HINT = re.compile(r"(?i)bearer|basic|eyJ")
_MIN_TOKEN = 14
_DIGIT_RUN = re.compile(r"[0-9](?:[ -]?[0-9]){12,}")
_GROUP = re.compile(r"[0-9]+")
_MIN_CARD, _MAX_CARD = 13, 19
# In a grouped card number (4-4-4-4, 4-6-5, ...) every group has at least three digits; requiring that
# keeps dates, version numbers and lists of small numbers from being taken for cards, and keeps the scan
# linear on hostile text such as "1 1 1 1 ...".
_MIN_GROUP = 3
_DOUBLED: Final = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)
_KEY_CACHE_SIZE = 4096


def luhn_valid(digits: str) -> bool:
    """True when the ASCII digit string `digits` passes the Luhn (mod 10) check."""
    odd = sum(ord(c) - 48 for c in digits[-1::-2])
    even = sum(_DOUBLED[ord(c) - 48] for c in digits[-2::-2])
    return (odd + even) % 10 == 0


def _normalise_key(key: str) -> str:
    return _SEPARATORS.sub("", key.casefold())


def _card_spans(run: str) -> list[tuple[int, int]]:
    """Spans (in `run`) of Luhn-valid card numbers among the digit groups of one digit run."""
    groups = [(m.start(), m.end()) for m in _GROUP.finditer(run)]
    if len(groups) == 1:
        return [(0, len(run))] if _MIN_CARD <= len(run) <= _MAX_CARD and luhn_valid(run) else []
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(groups):
        found = -1
        digits = ""
        candidates: list[tuple[int, str]] = []
        for j in range(i, len(groups)):
            start, end = groups[j]
            if end - start < _MIN_GROUP:
                break
            digits += run[start:end]
            if len(digits) > _MAX_CARD:
                break
            if len(digits) >= _MIN_CARD:
                candidates.append((j, digits))
        # The longest valid window wins: it hides the most of whatever the number is.
        for j, window in reversed(candidates):
            if luhn_valid(window):
                found = j
                break
        if found >= 0:
            spans.append((groups[i][0], groups[found][1]))
            i = found + 1
        else:
            i += 1
    return spans


def _word_char(char: str) -> bool:
    return char.isalnum() or char == "_"


def _glued(text: str, start: int, end: int) -> bool:
    """True when the digit run text[start:end] is part of a longer token: glued to letters, or one
    link of a dash-joined chain such as a UUID (`12345678-1234-1234-abcd-...`)."""
    dashed = "-" in text[start:end]
    if start > 0:
        before = text[start - 1]
        if _word_char(before) or (dashed and before == "-" and start > 1 and _word_char(text[start - 2])):
            return True
    if end < len(text):
        after = text[end]
        if _word_char(after) or (
            dashed and after == "-" and end + 1 < len(text) and _word_char(text[end + 1])
        ):
            return True
    return False


class Redactor:
    """Decides what is secret. Immutable once made; safe to share between threads.

    `keys`: key patterns (default `DEFAULT_SECRET_KEYS`); `extra_keys`: patterns
    added to those. `card_numbers`: also find card numbers by value.
    `field_redactor(key, value) -> bool`: the application's own rule, asked for
    every key the patterns did not match (the value is the original object).
    """

    def __init__(
        self,
        *,
        keys: Iterable[KeyPattern] = DEFAULT_SECRET_KEYS,
        extra_keys: Iterable[KeyPattern] = (),
        card_numbers: bool = True,
        field_redactor: FieldRedactor | None = None,
    ) -> None:
        fragments: list[str] = []
        regexes: list[re.Pattern[str]] = []
        for pattern in (*keys, *extra_keys):
            if isinstance(pattern, re.Pattern):
                regexes.append(pattern)
            elif isinstance(pattern, str):
                fragment = _normalise_key(pattern)
                if fragment:
                    fragments.append(fragment)
            else:
                raise TypeError(f"a key pattern is a str or a compiled regex, not {type(pattern).__name__}")
        # One alternation of all fragments: one regex search per new key, whatever the number of patterns.
        self._fragments = (
            re.compile("|".join(re.escape(f) for f in sorted(set(fragments), key=len, reverse=True)))
            if fragments
            else None
        )
        self._regexes = tuple(regexes)
        self.card_numbers = card_numbers
        self.field_redactor = field_redactor
        # Payloads repeat the same keys over and over: remember each key's verdict (bounded).
        self._key_verdicts: dict[str, bool] = {}
        self._callback_failed = False
        self._lock = threading.Lock()

    def is_secret_key(self, key: str) -> bool:
        """True when `key` matches one of the key patterns."""
        verdict = self._key_verdicts.get(key)
        if verdict is None:
            normalised = _normalise_key(key)
            verdict = bool(self._fragments is not None and self._fragments.search(normalised)) or any(
                r.search(key) for r in self._regexes
            )
            if len(self._key_verdicts) >= _KEY_CACHE_SIZE:
                self._key_verdicts.clear()
            self._key_verdicts[key] = verdict
        return verdict

    def redact_field(self, key: str, value: Any) -> bool:
        """True when the value under `key` must be replaced by `REDACTED`."""
        if self.is_secret_key(key):
            return True
        if self.field_redactor is None:
            return False
        try:
            return bool(self.field_redactor(key, value))
        except Exception:
            self._report_callback_failure()
            return True

    def scrub_text(self, text: str) -> str:
        """`text` with credentials shaped like one (`Bearer <token>`, a JWT) and every card number in it
        replaced by `REDACTED`."""
        if len(text) >= _MIN_TOKEN and _TOKEN_HINT.search(text):
            text = _JWT.sub(REDACTED, _SCHEME_TOKEN.sub(rf"\1 {REDACTED}", text))
        if not self.card_numbers or len(text) < _MIN_CARD:
            return text
        pieces: list[str] = []
        last = 0
        for match in _DIGIT_RUN.finditer(text):
            run_start = match.start()
            if _glued(text, run_start, match.end()):
                continue
            for start, end in _card_spans(match.group()):
                pieces.append(text[last : run_start + start])
                pieces.append(REDACTED)
                last = run_start + end
        if not pieces:
            return text
        pieces.append(text[last:])
        return "".join(pieces)

    def is_card_number(self, value: int) -> bool:
        """True when the integer `value` reads as a card number (13-19 digits, Luhn-valid)."""
        if not self.card_numbers or value < 10 ** (_MIN_CARD - 1) or value >= 10**_MAX_CARD:
            return False
        return luhn_valid(str(value))

    def _report_callback_failure(self) -> None:
        with self._lock:
            if self._callback_failed:
                return
            self._callback_failed = True
        logger.exception(
            "otel-workflow: the field redaction callback raised; the value was redacted "
            "(further failures are not logged)"
        )
