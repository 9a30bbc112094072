"""Tolerant parsing of an LLM's proposal into ``(name, thought, code)``.

Models are asked for ONE JSON object with keys "thought", "name", "code", but in practice answer
with JSON wrapped in a fenced block, JSON with raw newlines inside strings, a fenced Python block
with prose around it, or prose alone. Everything recoverable is recovered here; everything else
raises :class:`ProposalParseError` with one line naming what was missing, which the proposer
archives as the candidate's error (and can send back in a repair request).

This module only extracts text. Whether the code is a valid loss is the static check's job.

The answer is untrusted: it is refused above ``MAX_REPLY_CHARS`` before any parsing, fenced blocks are
found by a linear scan (a regex with a lazy body over 40k backticks took 17-29 s, see
``benchmarks/reply_parsing.py``), and whatever the JSON decoder or the AST parser raise on a hostile
answer (``RecursionError`` on 10k nested brackets, ``MemoryError``, ``ValueError``) becomes a
:class:`ProposalParseError`, never an exception that ends the run.
"""

from __future__ import annotations

import ast
import json
import re

from discopop.contract.syntax import parse

MAX_NAME_CHARS = 80
MAX_THOUGHT_CHARS = 4000
# An answer longer than this is refused unparsed: ~50k tokens, far above a loss with its reasoning (1-3k
# tokens) and above any max_tokens a proposal is asked with; the JSON decoder and the AST parser then
# never see megabytes of untrusted text.
MAX_REPLY_CHARS = 200_000
CODE_KEYS = ("code", "source", "python", "loss")  # "code" is asked for; the others are seen in the wild
FENCE = "```"
# What the decoder and the parser raise on hostile input besides their own errors (10k nested brackets).
HOSTILE_ERRORS = (RecursionError, MemoryError, ValueError)

_LANGUAGE = re.compile(r"[ \t]*([A-Za-z0-9_+-]*)")
_DEF = re.compile(r"^def\s+([A-Za-z][A-Za-z0-9_]*)\s*\(", re.MULTILINE)


class ProposalParseError(ValueError):
    """The answer holds no usable proposal; ``str(err)`` is one line saying what was missing."""


def fence_spans(text: str) -> list[tuple[str, str, int, int]]:
    """``(language, body, start, end)`` of every fenced block, in one left-to-right scan (linear time).

    A block opens with three backticks, an optional language and the rest of that line; its body runs to
    the next three backticks or, for an unclosed final fence, to the end. An opening fence with no newline
    after it opens nothing (nor can any later one). ``text[start:end]`` is the whole block with its fences.
    """
    spans: list[tuple[str, str, int, int]] = []
    pos = 0
    while True:
        start = text.find(FENCE, pos)
        if start < 0:
            break
        eol = text.find("\n", start + len(FENCE))
        if eol < 0:
            break
        language = _LANGUAGE.match(text, start + len(FENCE), eol)
        close = text.find(FENCE, eol + 1)
        end = len(text) if close < 0 else close + len(FENCE)
        spans.append((language.group(1).lower() if language else "", text[eol + 1:len(text) if close < 0 else close],
                      start, end))
        if close < 0:
            break
        pos = end
    return spans


def _fences(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced block; an unclosed final fence runs to the end."""
    return [(language, body) for language, body, _, _ in fence_spans(text)]


def _without_fences(text: str) -> str:
    """``text`` with each fenced block replaced by a space (the prose around the code)."""
    parts, pos = [], 0
    for _, _, start, end in fence_spans(text):
        parts += [text[pos:start], " "]
        pos = end
    return "".join([*parts, text[pos:]])


def function_name(code: str) -> str | None:
    """Name of the first public top-level function, from the AST or (for broken code) a regex."""
    try:
        for node in parse(code).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                return node.name
    except (SyntaxError, *HOSTILE_ERRORS):
        pass
    match = _DEF.search(code)
    return match.group(1) if match else None


def _clean_code(code: str) -> str:
    """Undo the usual damage: a fence inside the JSON string, or newlines left escaped."""
    code = code.strip("\n")
    fenced = _fences(code)
    if fenced and code.lstrip().startswith("```"):
        code = fenced[0][1]
    if "\n" not in code and "\\n" in code:
        try:
            code = json.loads(f'"{code}"')
        except HOSTILE_ERRORS:  # JSONDecodeError is a ValueError
            code = code.replace("\\n", "\n").replace("\\t", "\t").replace('\\"', '"')
    return code.strip("\n") + "\n"


def _json_candidates(text: str) -> list[str]:
    """Substrings that may hold the JSON object, most specific first."""
    found = [body for lang, body in _fences(text) if lang in ("json", "") and body.lstrip().startswith("{")]
    found.append(text.strip())
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        found.append(text[start:end + 1])
    return found


def _from_object(obj: dict, raw: str) -> tuple[str, str, str]:
    code = next((obj[k] for k in CODE_KEYS if isinstance(obj.get(k), str) and obj[k].strip()), None)
    if code is None:
        fenced = [body for lang, body in _fences(raw) if lang in ("python", "py") and "def " in body]
        if not fenced:
            keys = ", ".join(sorted(map(str, obj))) or "none"
            raise ProposalParseError(f'JSON answer has no "code" string (keys: {keys})')
        code = fenced[0]
    code = _clean_code(code)
    name = obj.get("name") if isinstance(obj.get("name"), str) and obj["name"].strip() else None
    thought = obj.get("thought")
    return _finish(name, thought if isinstance(thought, str) else "", code)


def _finish(name: str | None, thought: str, code: str) -> tuple[str, str, str]:
    name = (name or function_name(code) or "unnamed").strip()
    name = re.sub(r"\s+", "_", name)[:MAX_NAME_CHARS]
    return name, thought.strip()[:MAX_THOUGHT_CHARS], code


def parse_proposal(text: str | None) -> tuple[str, str, str]:
    """Return ``(name, thought, code)`` from an LLM answer, or raise :class:`ProposalParseError`.

    Nothing else escapes it: an answer over ``MAX_REPLY_CHARS``, or one that makes the decoder or the
    parser raise, is a :class:`ProposalParseError` with one line saying so."""
    if text is None or not text.strip():
        raise ProposalParseError("empty answer")
    if len(text) > MAX_REPLY_CHARS:
        raise ProposalParseError(f"answer is {len(text):,} characters; the limit is {MAX_REPLY_CHARS:,}")
    try:
        return _parse(text)
    except ProposalParseError:
        raise
    except (*HOSTILE_ERRORS, TypeError, AttributeError) as err:
        raise ProposalParseError(f"answer could not be parsed safely ({type(err).__name__})") from None


def _parse(text: str) -> tuple[str, str, str]:
    json_error: str | None = None
    for chunk in _json_candidates(text):
        try:
            obj = json.loads(chunk, strict=False)  # strict=False: raw newlines inside strings are common
        except json.JSONDecodeError as err:
            json_error = json_error or f"broken JSON ({err.msg} at line {err.lineno} column {err.colno})"
            continue
        except HOSTILE_ERRORS as err:  # 10k nested brackets: RecursionError
            json_error = json_error or f"JSON the decoder cannot take ({type(err).__name__})"
            continue
        if isinstance(obj, dict):
            return _from_object(obj, text)
    fenced = [body for lang, body in _fences(text) if lang in ("python", "py", "") and "def " in body]
    if fenced:
        code = _clean_code(fenced[0])
        prose = _without_fences(text)
        return _finish(None, " ".join(prose.split()), code)
    if _DEF.search(text):
        try:  # a bare module with no fences and no prose
            parse(text)
            return _finish(None, "", _clean_code(text))
        except (SyntaxError, *HOSTILE_ERRORS):
            pass
    if json_error and text.lstrip().startswith(("{", "```json", "```JSON")):
        raise ProposalParseError(json_error)
    raise ProposalParseError("no JSON object and no fenced Python code block with a function in the answer")
