"""Static behaviour filter: a child that is its parent up to a positive scale, an added constant or a rescaled
beta trains exactly like it, so the proposer redraws it instead of spending a training run on it.

The check is static (a normal form of the code's AST), never an execution of the untrusted child.
"""

from __future__ import annotations

import ast
import functools

from discopop.contract.syntax import parse
from discopop.proposers.evolution.program import Substitute, functions, margin_site, public_function


def _positive(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) in (int, float) and node.value > 0


def _peel_scale(node: ast.expr, shifts: bool) -> ast.expr:
    """Strip positive constant factors (and, with ``shifts``, added constants) off the top of an expression."""
    while isinstance(node, ast.BinOp):
        op, left, right = node.op, node.left, node.right
        if isinstance(op, ast.Mult) and _positive(left):
            node = right
        elif isinstance(op, (ast.Mult, ast.Div)) and _positive(right):
            node = left
        elif shifts and isinstance(op, ast.Add) and isinstance(left, ast.Constant):
            node = right
        elif shifts and isinstance(op, (ast.Add, ast.Sub)) and isinstance(right, ast.Constant):
            node = left
        else:
            break
    return node


class _BetaScale(ast.NodeTransformer):
    """``c * beta``, ``beta * c``, ``beta / c`` (c > 0) -> ``beta``: a constant inside beta's scale."""

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        beta = lambda n: isinstance(n, ast.Name) and n.id == "beta"  # noqa: E731
        if isinstance(node.op, ast.Mult) and (beta(node.left) and _positive(node.right)):
            return node.left
        if isinstance(node.op, ast.Mult) and (beta(node.right) and _positive(node.left)):
            return node.right
        if isinstance(node.op, ast.Div) and beta(node.left) and _positive(node.right):
            return node.left
        return node


@functools.lru_cache(maxsize=16384)
def behaviour_form(code: str) -> str:
    """A static normal form under which a positive scale of the loss, an added constant, a positive scale of
    the margin and a constant inside beta's scale all vanish (Adam ignores the first two; the others only
    change beta). Module-level numbers are inlined first, so a retuned constant shows where it acts."""
    tree = parse(code)
    numbers = {t.id: s.value for s in tree.body if isinstance(s, ast.Assign) and isinstance(s.value, ast.Constant)
               for t in s.targets if isinstance(t, ast.Name)}
    inline = lambda n: ast.Constant(numbers[n.id]) if isinstance(n, ast.Name) and n.id in numbers else None  # noqa: E731
    tree = Substitute(inline).visit(tree)
    tree.body = [s for s in tree.body if not isinstance(s, (ast.Expr, ast.Assign, ast.Import, ast.ImportFrom))]
    public = public_function(tree)
    public.name = "loss"
    for fn in functions(tree):
        site = margin_site(fn)
        if site is not None:
            site.value = _peel_scale(site.value, shifts=False)
    for node in ast.walk(public):
        if isinstance(node, ast.Return) and node.value is not None:
            node.value = _peel_scale(node.value, shifts=True)
    return ast.dump(_BetaScale().visit(tree))


def same_behaviour(parent_code: str, child_code: str) -> bool:
    """True if the child is, statically, its parent up to a positive scale, an added constant or a
    rescaled beta: it would train exactly like the parent, so it is not worth proposing."""
    try:
        return behaviour_form(parent_code) == behaviour_form(child_code)
    except (SyntaxError, StopIteration):
        return False

