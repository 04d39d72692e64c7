"""Text that is safe to store: every string that leaves for DuckDB or JSON must encode as UTF-8."""

from __future__ import annotations


def utf8(text: str) -> str:
    """`text` itself, or with lone surrogates (which UTF-8 cannot encode) replaced by U+FFFD."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text
