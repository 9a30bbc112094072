"""Every parse in the package goes through ``contract.syntax.parse``, the process-wide lock (CPython 3.11's ast
module is not thread-safe: gh-106905)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from discopop.contract import losses, syntax
from discopop.proposers.llm.parsing import function_name

PACKAGE = Path(__file__).resolve().parent.parent / "discopop"
DPO = (PACKAGE / "proposals" / "dpo.py").read_text()


def test_no_module_parses_without_the_lock():
    direct = re.compile(r"\bast\.parse\(")
    offenders = [str(p.relative_to(PACKAGE)) for p in sorted(PACKAGE.rglob("*.py"))
                 if p.name != "syntax.py" and direct.search(p.read_text())]
    assert offenders == []


def test_the_parses_of_a_check_hold_the_lock(monkeypatch: pytest.MonkeyPatch):
    original = ast.parse
    calls: list[bool] = []

    def watched(*args, **kwargs):
        calls.append(syntax._LOCK.locked())
        return original(*args, **kwargs)

    monkeypatch.setattr(ast, "parse", watched)
    losses.static_check(DPO)
    losses.normalise_loss(DPO)
    losses.code_hash(DPO)
    assert function_name(DPO) == "dpo"
    assert calls and all(calls)
