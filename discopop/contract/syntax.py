"""Parsing Python source into an AST, one thread at a time in the whole process.

Why: on CPython 3.11 the C code that turns a parse into ``ast`` objects counts its recursion depth in state
shared by every thread of the interpreter, so two threads parsing at once can fail with ``SystemError: AST
constructor recursion depth mismatch`` (CPython gh-106905). The main process parses in several threads (the
proposer's look-ahead thread, LLM request threads, the loop's static checks), and that error must never fail a
candidate or stop a run. Every parse in ``discopop`` goes through :func:`parse` (``tests/test_code_health.py``
checks it); a parse takes milliseconds, so the lock costs nothing measurable.
"""

from __future__ import annotations

import ast
import threading

_LOCK = threading.Lock()


def parse(source: str, mode: str = "exec") -> ast.Module | ast.Expression:
    """``ast.parse(source, mode=mode)`` under the process-wide lock."""
    with _LOCK:
        return ast.parse(source, mode=mode)
