"""The gate every proposal passes in the main process before anything else touches it.

Proposals come from an LLM, the paper protocol, the evolution proposer or ``import-run``; their
name, thought and code are untrusted text. Before this gate, one bad reply could end a run: a lone
surrogate made SQLite's UTF-8 encoding raise, a 2,000-term sum overflowed the recursion of the code
hash, a name carried ANSI escapes and newlines into every table. :func:`admit` returns a copy that
is safe to hash, archive and show, or the same proposal marked with a one-line ``error`` (archived
``invalid``): it never raises, so the run goes on.

Limits (chosen for what a loss needs, far above it, and far below what hurts):

- code: ``MAX_CODE_CHARS`` = 20,000 characters (the paper's losses are 300-1,500; an answer's
  ``max_tokens`` rarely allows more) and an AST at most ``MAX_AST_DEPTH`` = 100 levels deep
  (real losses: under 20). The AST walkers in the main process (``ast.unparse``, the allow-list check,
  the normaliser) recurse a few frames per level, so 100 levels stay well inside Python's 1,000;
- code characters: no lone surrogates, no control characters other than tab, newline, CR and form
  feed, no bidirectional-text controls (the "trojan source" trick); refused, never rewritten, since
  an export must be exactly what was scored. A refused proposal's code is stored cut to the limit
  with those characters escaped (``\\x1b``), so its row still shows what came;
- thought: ``MAX_THOUGHT_CHARS`` = 4,000, control characters other than newline and tab and lone
  surrogates removed, bidi controls dropped;
- name: ASCII letters, digits and ``_`` only, at most ``MAX_NAME_CHARS`` = 64, never empty, not
  starting with a digit. A name that had to change and then equals a name the archive already holds
  gets ``_2``, ``_3`` ... (a collision the gate made is never silent); the original is kept,
  escaped, in ``info["original_name"]``. A name that arrives clean is kept as is even if repeated:
  repairs reuse their parent's name and references are found by theirs.
"""

from __future__ import annotations

import ast
import re
import textwrap
import unicodedata
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from discopop.contract.losses import code_hash
from discopop.contract.syntax import parse
from discopop.proposers.base import Candidate
from discopop.text import ERROR_LIMIT, error_line

MAX_CODE_CHARS = 20_000
MAX_THOUGHT_CHARS = 4_000
MAX_NAME_CHARS = 64
MAX_AST_DEPTH = 100
MAX_ORIGINAL_NAME_CHARS = 200  # the escaped original name kept in info when it had to change
PREFIX = "gate: "

# Characters never stored as text: lone surrogates (SQLite cannot encode them), C0/C1 controls but
# tab/newline/CR/form feed, and the bidirectional-text controls that make code read other than it runs.
_UNSAFE_CODE = re.compile("[\ud800-\udfff\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_TEXT = re.compile("[\ud800-\udfff\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")
_NOT_IDENT = re.compile(r"[^A-Za-z0-9_]+")


def _escape(match: re.Match[str]) -> str:
    point = ord(match.group())
    return f"\\x{point:02x}" if point < 0x100 else f"\\u{point:04x}"


def escape_unsafe(text: str) -> str:
    """``text`` with every unsafe character written as its escape (``\\x1b``, ``\\ud800``): storable, visible."""
    return _UNSAFE_CODE.sub(_escape, text)


def unprintable(text: str) -> bool:
    """Whether ``text`` holds a character that has no business in a one-line name (a control, a surrogate)."""
    return _UNSAFE_CODE.search(text) is not None or any(c in text for c in "\t\n\r\f")


def clean_text(text: Any, limit: int) -> str:
    """Free text (a thought, an error) cut to ``limit`` characters, unsafe characters dropped (CR too)."""
    text = text if isinstance(text, str) else ("" if text is None else str(text))
    return _UNSAFE_TEXT.sub("", _ANSI.sub("", text[: limit * 2]))[:limit].strip()


def reason_line(text: Any, limit: int = ERROR_LIMIT) -> str:
    """An error reason: clean, whitespace collapsed to single spaces, at most ``limit`` characters."""
    return " ".join(clean_text(text, limit * 2).split())[:limit]


def safe_name(raw: Any, fallback: str = "unnamed") -> str:
    """An identifier from ``raw``: ASCII letters, digits and ``_``, at most ``MAX_NAME_CHARS``, never empty."""
    text = raw if isinstance(raw, str) else ""
    text = _ANSI.sub("", text[: MAX_NAME_CHARS * 4])
    text = unicodedata.normalize("NFKD", _UNSAFE_TEXT.sub("", text)).encode("ascii", "ignore").decode()
    text = _NOT_IDENT.sub("_", text).strip("_")[:MAX_NAME_CHARS].rstrip("_")
    if not text:
        return fallback
    return f"n_{text}"[:MAX_NAME_CHARS] if text[0].isdigit() else text


def _unused(name: str, taken: Callable[[str], bool]) -> str:
    """``name`` or the first ``name_N`` (N = 2, 3 ...) not taken, within the length limit."""
    if not taken(name):
        return name
    for n in range(2, 10_000):
        suffix = f"_{n}"
        option = name[: MAX_NAME_CHARS - len(suffix)] + suffix
        if not taken(option):
            return option
    raise ValueError(f"no free name like {name!r}")


def ast_depth(tree: ast.AST, limit: int) -> int:
    """Depth of ``tree`` (iteratively: no recursion), counted up to ``limit + 1`` at most."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def code_problem(code: Any) -> str | None:
    """Why ``code`` is unsafe to hash, parse, check or store here (one line), or None.

    Code that merely does not parse (a ``SyntaxError``) passes: the static check reports it with its line.
    """
    if not isinstance(code, str):
        return f"code is a {type(code).__name__}, not text"
    if len(code) > MAX_CODE_CHARS:
        return f"code is {len(code):,} characters; the limit is {MAX_CODE_CHARS:,}"
    bad = _UNSAFE_CODE.search(code)
    if bad is not None:
        line = code.count("\n", 0, bad.start()) + 1
        return f"code contains the character {ascii(bad.group())} (line {line}), which is not allowed in a loss"
    tree = None
    for text in (code, textwrap.dedent(code)):  # the method form may arrive indented: normalise_loss dedents it
        try:
            tree = parse(text)
            break
        except SyntaxError:
            continue
        except (RecursionError, MemoryError, ValueError) as err:
            return f"code cannot be parsed safely ({type(err).__name__})"
    if tree is not None:
        depth = ast_depth(tree, MAX_AST_DEPTH)
        if depth > MAX_AST_DEPTH:
            return f"code is nested more than {MAX_AST_DEPTH} levels deep (e.g. a long chain of + or nested calls)"
    code_hash(code)  # what the archive does next: any failure here is this proposal's, not the run's
    return None


def admit(candidate: Candidate, taken: Callable[[str], bool] = lambda name: False) -> Candidate:
    """A copy of ``candidate`` that is safe to hash, archive and show, or marked ``error`` (never raises).

    ``taken(name)``: whether the archive already holds ``name`` (for names the gate had to change).
    """
    try:
        return _admit(candidate, taken)
    except Exception as err:  # noqa: BLE001 - whatever one proposal does, the run goes on
        raw = getattr(candidate, "code", "")
        return Candidate(name=safe_name(getattr(candidate, "name", None), "refused"),
                         code=escape_unsafe(raw[:MAX_CODE_CHARS]) if isinstance(raw, str) else "",
                         thought="", parent_ids=[], proposer=safe_name(getattr(candidate, "proposer", ""), "unknown"),
                         info={}, error=reason_line(f"{PREFIX}proposal could not be checked ({error_line(err)})"))


def _admit(candidate: Candidate, taken: Callable[[str], bool]) -> Candidate:
    info = dict(candidate.info or {})
    fallback = "unparseable" if candidate.error else "unnamed"
    name = safe_name(candidate.name, fallback)
    if name != candidate.name:
        name = _unused(name, taken)
        if isinstance(candidate.name, str) and candidate.name:
            info["original_name"] = ascii(candidate.name[:MAX_ORIGINAL_NAME_CHARS])[:MAX_ORIGINAL_NAME_CHARS]
    thought = clean_text(candidate.thought, MAX_THOUGHT_CHARS)
    parents = [int(p) for p in candidate.parent_ids or [] if isinstance(p, int) and not isinstance(p, bool)]
    error = (reason_line(candidate.error) or "invalid proposal") if candidate.error else None
    code = candidate.code
    if error is None:
        problem = code_problem(code)
        if problem is not None:
            error = PREFIX + problem
    if error is not None:
        code = escape_unsafe(code[:MAX_CODE_CHARS]) if isinstance(code, str) else ""
    return replace(candidate, name=name, thought=thought, code=code, parent_ids=parents, info=info, error=error)
