"""Clean-up applied to every child before it is proposed: guard exponentials, drop dead code, lay the module out.

Operators only add code (a parent kept whole as a helper, new constants), so without this pass children would
carry unused helpers and imports, and an operator that exposes an ``exp`` could overflow float32.
"""

from __future__ import annotations

import ast

from discopop.contract.allowlist_check import dotted_parts
from discopop.contract.syntax import parse
from discopop.proposers.evolution.program import EXP, expr, functions, loaded, public_function


def _clip_exps(tree: ast.Module) -> None:
    """Clamp the argument of every tensor exp (call or method) so large margins cannot overflow float32."""
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "exp"):
            continue
        head = dotted_parts(node.func)[:1]
        if head == ["math"] or node.keywords or len(node.args) != (1 if head == ["torch"] else 0):
            continue
        arg = node.args[0] if head == ["torch"] else node.func.value
        if not (isinstance(arg, ast.Call) and dotted_parts(arg.func)[-1:] == ["clamp"]):
            new = expr(EXP, U=arg)
            node.func, node.args = new.func, new.args


def _prune(tree: ast.Module) -> None:
    """Drop dead local assignments, unused constants and helpers and imports; add imports now needed."""
    changed = True
    while changed:
        used, size = loaded(tree), sum(len(f.body) for f in functions(tree)) + len(tree.body)
        for fn in functions(tree):
            fn.body = [s for s in fn.body if not (isinstance(s, ast.Assign) and len(s.targets) == 1 and
                                                  isinstance(s.targets[0], ast.Name) and not used[s.targets[0].id])]
        tree.body = [s for s in tree.body if not (isinstance(s, ast.Assign) and not any(used[t.id] for t in s.targets))
                     and not (isinstance(s, ast.FunctionDef) and s.name.startswith("_") and not used[s.name])]
        changed = size != sum(len(f.body) for f in functions(tree)) + len(tree.body)
    used = loaded(tree)
    bound = lambda s: [(a.asname or a.name).split(".")[0] for a in s.names]  # noqa: E731
    imports = [s for s in tree.body if isinstance(s, (ast.Import, ast.ImportFrom)) and any(used[b] for b in bound(s))]
    tree.body = [s for s in tree.body if not isinstance(s, (ast.Import, ast.ImportFrom))]
    have = {b for s in imports for b in bound(s)}
    wanted = {"math": "import math", "torch": "import torch", "F": "import torch.nn.functional as F"}
    tree.body[:0] = list({ast.dump(s): s for s in imports}.values()) + [
        parse(line).body[0] for ident, line in wanted.items() if used[ident] and ident not in have]


def finish(tree: ast.Module, name: str, doc: str) -> str:
    """Clip, prune, name the public function; lay out docstring, imports, constants, helpers, public."""
    _clip_exps(tree)
    _prune(tree)
    public_function(tree).name = name
    rank = {ast.Import: 0, ast.ImportFrom: 0, ast.Assign: 1, ast.FunctionDef: 2}
    body = [s for s in tree.body if not isinstance(s, ast.Expr)]
    body.sort(key=lambda s: rank[type(s)] + (getattr(s, "name", "") == name))
    tree.body = [ast.Expr(value=ast.Constant(doc)), *body]
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"

