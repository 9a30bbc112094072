"""Short text for people: one line of an error, a name or an idea cut to fit a cell, a prompt or a label."""

from __future__ import annotations

import re
import unicodedata

ERROR_LIMIT = 300  # characters of an error message kept in a reply or a row


def error_line(err: BaseException, limit: int = ERROR_LIMIT) -> str:
    """``Type: message`` on one line (the first), at most ``limit`` characters."""
    text = f"{type(err).__name__}: {err}".strip().splitlines()
    return (text[0] if text else type(err).__name__)[:limit]


def one_line(text: str, width: int) -> str:
    """Whitespace collapsed, cut to ``width`` characters with an ellipsis.

    Cut by characters rather than words (``textwrap.shorten``): names are often one long identifier,
    which word-wise shortening would drop whole.
    """
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# Categories removed from untrusted text: control characters (C0, DEL, C1: ESC starts ANSI/OSC sequences), format
# characters (bidirectional overrides, zero-width) and line/paragraph separators.
_DROP = {"Cc", "Cf", "Zl", "Zp"}
_SPACE = re.compile(r"[\t\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]+")


def clean(text: object) -> str:
    """``text`` with line breaks as spaces and every control, format and separator character removed: what a
    plain terminal line may show of untrusted text (``report.escape`` builds every other output kind on it)."""
    text = _SPACE.sub(" ", str(text))
    return "".join(ch for ch in text if unicodedata.category(ch) not in _DROP)
