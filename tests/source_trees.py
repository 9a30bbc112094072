"""Source files parsed once per test session (``tests/test_imports.py``, ``tests/test_code_health.py``).

Several checks each walk every module of the package; parsing them again for each check was most of those tests'
time in ``pytest -m unit``. Trees are keyed by the file's text, so a changed or planted file is parsed afresh;
callers only read them (never transform a cached tree in place).
"""

from __future__ import annotations

import ast
from pathlib import Path

_TREES: dict[str, ast.Module] = {}


def parsed(path: Path) -> ast.Module:
    """``ast.parse`` of ``path`` (a syntax error names the file), shared with every other caller of the same text."""
    text = path.read_text(encoding="utf-8")
    tree = _TREES.get(text)
    if tree is None:
        tree = _TREES[text] = ast.parse(text, filename=str(path))
    return tree
