"""Tolerant parsing of an LLM's proposal into ``(name, thought, code)``.

Models are asked for ONE JSON object with keys "thought", "name", "code", but in practice answer
with JSON wrapped in a fenced block, JSON with raw newlines inside strings, a fenced Python block
with prose around it, or prose alone. Everything recoverable is recovered here; everything else
raises :class:`ProposalParseError` with one line naming what was missing, which the proposer
archives as the candidate's error (and can send back in a repair request).

This module only extracts text. Whether the code is a valid loss is the static check's job.
"""

from __future__ import annotations

import ast
import json
import re

MAX_NAME_CHARS = 80
MAX_THOUGHT_CHARS = 4000
CODE_KEYS = ("code", "source", "python", "loss")  # "code" is asked for; the others are seen in the wild

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_DEF = re.compile(r"^def\s+([A-Za-z][A-Za-z0-9_]*)\s*\(", re.MULTILINE)


class ProposalParseError(ValueError):
    """The answer holds no usable proposal; ``str(err)`` is one line saying what was missing."""


def _fences(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced block; an unclosed final fence runs to the end."""
    return [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]


def function_name(code: str) -> str | None:
    """Name of the first public top-level function, from the AST or (for broken code) a regex."""
    try:
        for node in ast.parse(code).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                return node.name
    except SyntaxError:
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
        except json.JSONDecodeError:
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
    """Return ``(name, thought, code)`` from an LLM answer, or raise :class:`ProposalParseError`."""
    if text is None or not text.strip():
        raise ProposalParseError("empty answer")
    json_error: str | None = None
    for chunk in _json_candidates(text):
        try:
            obj = json.loads(chunk, strict=False)  # strict=False: raw newlines inside strings are common
        except json.JSONDecodeError as err:
            json_error = json_error or f"broken JSON ({err.msg} at line {err.lineno} column {err.colno})"
            continue
        if isinstance(obj, dict):
            return _from_object(obj, text)
    fenced = [body for lang, body in _fences(text) if lang in ("python", "py", "") and "def " in body]
    if fenced:
        code = _clean_code(fenced[0])
        prose = _FENCE.sub(" ", text)
        return _finish(None, " ".join(prose.split()), code)
    if _DEF.search(text):
        try:  # a bare module with no fences and no prose
            ast.parse(text)
            return _finish(None, "", _clean_code(text))
        except SyntaxError:
            pass
    if json_error and text.lstrip().startswith(("{", "```json", "```JSON")):
        raise ProposalParseError(json_error)
    raise ProposalParseError("no JSON object and no fenced Python code block with a function in the answer")
