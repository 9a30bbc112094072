"""Untrusted text (names, thoughts, errors from an LLM or an imported file) made safe for each kind of output.

Every output that shows such text goes through one of these: a terminal (rich), a matplotlib figure, a CSV
cell, a markdown table cell, a ``#`` comment. HTML is escaped by jinja2's autoescape and ``html.escape``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.markup import escape as _rich_escape

from discopop.text import clean

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_CSV_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def terminal(text: object) -> str:
    """For rich output: control characters (ANSI/OSC escapes) removed and rich markup escaped."""
    return _rich_escape(clean(text))


def comment(text: object) -> str:
    """For a ``#`` comment line of a Python file: one line, nothing that could end the comment."""
    return clean(text)


def plot_text(text: object) -> str:
    """For a matplotlib label. Figures are drawn with mathtext off (:func:`no_mathtext`), so ``$`` stays literal."""
    return clean(text)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_cell(value: object) -> object:
    """A CSV cell a spreadsheet will not run: text starting with ``= + - @``, tab or CR gets a leading ``'``.

    Numbers (and text that is a number, such as ``-0.5``) are left as they are.
    """
    if not isinstance(value, str) or _is_number(value):
        return value
    return "'" + value if value.startswith(_CSV_TRIGGERS) else value


def markdown_cell(text: object) -> str:
    """For a markdown table cell: one line, ``|``, backticks, ``\\`` and ``<`` escaped."""
    text = clean(text).replace("\\", "\\\\")
    return text.replace("|", "\\|").replace("`", "\\`").replace("<", "&lt;")


def no_mathtext(fig: Figure) -> Figure:
    """Switch mathtext off on every text of ``fig``: a name holding ``$\\foo$`` would otherwise be parsed as
    TeX and abort the drawing (escaping ``$`` is not enough: matplotlib 3.11 still parses some escaped text)."""
    from matplotlib.text import Text  # lazy: matplotlib (~1 CPU-s) only where a figure is drawn, not in the terminal

    for text in fig.findobj(Text):
        text.set_parse_math(False)
    return fig


@contextmanager
def plain_text_figures() -> Iterator[None]:
    """Texts created (or drawn lazily, like new ticks) inside this block are never mathtext."""
    import matplotlib as mpl  # lazy: matplotlib (~1 CPU-s) only where a figure is drawn, not in the terminal

    with mpl.rc_context({"text.parse_math": False}):
        yield


def code_text(text: object) -> str:
    """For source code shown or logged as text (wandb): line breaks and tabs kept, every other control, format
    and separator character removed (an ESC could rewrite a terminal that prints the log)."""
    lines = str(text).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join("\t".join(clean(part) for part in line.split("\t")) for line in lines)
