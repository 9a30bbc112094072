"""Loss programs as ASTs: the small toolkit every operator, the clean-up and the behaviour filter share.

A loss is a module with one public function (its name is free) taking ``losses.LOSS_ARGS``, optional private
helpers and module-level constants. These helpers find its parts (public function, margin), build expressions
from templates, draw fresh names, and cache the two facts about a code text the proposer asks for again and
again (its hash and whether it passes the static check).
"""

from __future__ import annotations

import ast
import copy
import functools
from collections import Counter
from collections.abc import Callable

from discopop.contract import losses
from discopop.contract.syntax import parse

# e**30 ~ 1e13: finite in float32 after weighting and batch means; larger arguments are clipped.
EXP = "torch.exp(torch.clamp(U, max=30.0))"
POLICY = {"policy_chosen_logps", "policy_rejected_logps"}


class Substitute(ast.NodeTransformer):
    """Replace every node for which ``pick`` returns a substitute (``None``: keep it and descend)."""

    def __init__(self, pick: Callable[[ast.AST], ast.AST | None]):
        self.pick = pick

    def visit(self, node: ast.AST) -> ast.AST:
        new = self.pick(node)
        return self.generic_visit(node) if new is None else new


def expr(template: str, **subs: ast.expr) -> ast.expr:
    """Parse a template whose single-letter placeholders stand for sub-expressions."""
    pick = lambda n: copy.deepcopy(subs[n.id]) if isinstance(n, ast.Name) and n.id in subs else None  # noqa: E731
    return Substitute(pick).visit(parse(template, mode="eval").body)


def name_node(ident: str) -> ast.Name:
    return ast.Name(id=ident, ctx=ast.Load())


def assign(ident: str, value: ast.expr) -> ast.Assign:
    return ast.Assign(targets=[ast.Name(id=ident, ctx=ast.Store())], value=value)


def loaded(node: ast.AST) -> Counter:
    """How often each name is read below ``node``."""
    return Counter(n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load))


def functions(tree: ast.Module) -> list[ast.FunctionDef]:
    return [s for s in tree.body if isinstance(s, ast.FunctionDef)]


def public_function(tree: ast.Module) -> ast.FunctionDef:
    """The loss itself: the module's first function without a leading underscore."""
    return next(f for f in functions(tree) if not f.name.startswith("_"))


def fresh_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_2``, ``base_3``, ... whichever is free first; the name is added to ``taken``."""
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


def all_names(tree: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {f.name for f in functions(tree)}


def add_constant(tree: ast.Module, base: str, value: float) -> ast.Name:
    """Bind a new module-level constant (where tune can reach it later)."""
    ident = fresh_name(base, all_names(tree))
    tree.body.insert(0, assign(ident, ast.Constant(value)))
    return name_node(ident)


def significant(value: float) -> float:
    """``value`` rounded to four significant digits, so constants in child code stay readable."""
    return float(f"{value:.4g}")


def margin_site(fn: ast.FunctionDef) -> ast.Assign | None:
    """The assignment that defines a function's margin: the first one reading both policy log-probs."""
    return next((s for s in fn.body if isinstance(s, ast.Assign) and len(s.targets) == 1
                 and isinstance(s.targets[0], ast.Name) and POLICY <= set(loaded(s.value))), None)


def margin_sites(tree: ast.Module) -> list[ast.Assign]:
    return [site for fn in functions(tree) if (site := margin_site(fn)) is not None]


def rename(tree: ast.Module, mapping: dict[str, str]) -> None:
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in mapping:
            node.id = mapping[node.id]
        elif isinstance(node, ast.FunctionDef) and node.name in mapping:
            node.name = mapping[node.name]


# Both are pure functions of the code; caching them keeps propose() fast as the history grows.
@functools.lru_cache(maxsize=16384)
def code_hash(code: str) -> str:
    return losses.code_hash(code)


@functools.lru_cache(maxsize=16384)
def passes_static_check(code: str) -> bool:
    """Whether the operators may work on ``code``: it passes the static check with the four-input signature (they
    splice ``LOSS_ARGS``; a contract-v2 loss, e.g. a ``simpo`` baseline, is not a parent yet)."""
    try:
        info = losses.static_check(code)
    except losses.LossRejected:
        return False
    return info.inputs == losses.LOSS_ARGS[:4]
