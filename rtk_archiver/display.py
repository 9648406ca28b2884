"""Text from the API (recording ids, file names, error messages) made safe to show.

A terminal obeys escape sequences (ESC ...), a carriage return overwrites what was printed,
NUL truncates in some viewers and bidi overrides (U+202E) reverse what follows: such
characters are shown escaped (``\\x1b``, ``\\r``, ``\\u202e``), never raw.

The one place such text is escaped: ``printable`` for a log line, a terminal and a table
artifact's cells (``printable_row``); ``markdown_text`` for a Markdown artifact (also no
table, heading, link or HTML made from it).
"""

from __future__ import annotations

import re
import unicodedata

#: control (Cc), format (Cf: bidi overrides, zero-width), line / paragraph separators, and
#: lone surrogates (Cs: they cannot even be encoded for a terminal)
_ESCAPED_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Cs"}
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: object, limit: int | None = None) -> str:
    """``text`` with every control, format or separator character escaped; cut to ``limit``
    characters (with an ellipsis) if given."""
    s = "" if text is None else str(text)
    out = []
    for ch in s:
        if unicodedata.category(ch) in _ESCAPED_CATEGORIES:
            code = ord(ch)
            out.append(_NAMED.get(ch) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"))
        else:
            out.append(ch)
    result = "".join(out)
    if limit is not None and len(result) > limit:
        result = result[: max(0, limit - 1)] + "…"
    return result


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~&])")


def markdown_text(text: object, limit: int | None = None) -> str:
    """``printable(text)`` with Markdown's punctuation backslash-escaped: shown literally in a
    Markdown artifact (no links, code spans, tables or HTML made from API data)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", printable(text, limit))


def printable_row(row: dict) -> dict:
    """A table artifact's row with every text cell ``printable`` (Prefect shows table cells as
    text, never as Markdown)."""
    return {k: printable(v) if isinstance(v, str) else v for k, v in row.items()}
