"""The AST walk that enforces ``discopop.contract.allowlist`` on a loss module, executing nothing.

Module top level: only a docstring, allowed imports, numeric constants and function definitions.
Function bodies: only listed statement and expression kinds; every name a parameter, local, constant,
helper or allowed builtin; every attribute a listed ``torch`` / ``F`` / ``math`` name or a listed
tensor method; no bytes, f-strings, string formatting, dunders, decorators, lambdas or classes.
The first problem found is raised as :class:`LossRejected` naming its line.
"""

from __future__ import annotations

import ast
import builtins
import math
import operator
import re

from discopop.contract import allowlist

ALLOWED_IMPORTS = set(allowlist.MODULES)
_F = "torch.nn.functional"
# Every builtin name: a loss may not rebind one (a gap in its own bindings would reach the real one).
_BUILTIN_NAMES = frozenset(dir(builtins))
# Strings may only be plain words passed to a call (``reduction='none'``, ``float('-inf')``).
_PLAIN_STRING = re.compile(r"[A-Za-z0-9_ ,.+<>-]*")
_MAX_CONSTANT = 1e300  # module-level constants are evaluated at load: keep that cheap and finite
_FUNCTION_STATEMENTS = (ast.Assign, ast.AugAssign, ast.Return, ast.If, ast.For, ast.Pass, ast.Assert, ast.Expr)
# Expression nodes a loss may use; anything else (lambda, dict, set, walrus, await, ...) is refused.
_EXPRESSIONS = (
    ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.IfExp, ast.Compare, ast.Call, ast.Constant, ast.Attribute,
    ast.Subscript, ast.Slice, ast.Name, ast.List, ast.Tuple, ast.ListComp, ast.GeneratorExp,
)  # fmt: skip
_GRAMMAR = (ast.operator, ast.unaryop, ast.cmpop, ast.boolop, ast.expr_context, ast.comprehension, ast.keyword)
_ANNOTATION_NAMES = {"float", "int", "bool"}
# ``import math as torch`` would make every check of ``torch.<name>`` read the wrong table.
_CANONICAL = {"torch": "torch", "F": _F, "math": "math"}


class LossRejected(ValueError):
    """Static check failed. ``str(err)`` is one line naming the problem and its line."""

    def __init__(self, reason: str, line: int | None = None):
        self.reason = reason
        self.line = line
        super().__init__(f"line {line}: {reason}" if line else reason)


def split_chain(node: ast.expr) -> tuple[ast.expr, list[str]]:
    """``a.b(x).c.d`` -> (the call ``a.b(x)``, ["c", "d"]): the innermost non-attribute and the names after it."""
    attrs: list[str] = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    return node, attrs[::-1]


def dotted_parts(node: ast.expr) -> list[str]:
    """``torch.nn.functional.relu`` -> ["torch", "nn", "functional", "relu"]; a chain on anything but a plain
    name keeps only the attribute names (``f(x).clamp`` -> ["clamp"])."""
    root, attrs = split_chain(node)
    return [root.id, *attrs] if isinstance(root, ast.Name) else attrs


def _import_aliases(node: ast.Import | ast.ImportFrom) -> dict[str, str]:
    """Local name -> module for one allowed import statement; anything else is refused."""
    only = "(only torch, torch.nn.functional, math)"
    if isinstance(node, ast.Import):
        bound = {}
        for alias in node.names:
            if alias.name not in ALLOWED_IMPORTS:
                raise LossRejected(f"import of '{alias.name}' is not allowed {only}", node.lineno)
            # ``import torch.nn.functional`` binds ``torch``; ``... as F`` binds F to the submodule.
            bound[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        return bound
    module = node.module or ""
    bound = {}
    for alias in node.names:
        if node.level or f"{module}.{alias.name}" != _F:
            raise LossRejected(f"'from {module} import {alias.name}' is not allowed {only}", node.lineno)
        bound[alias.asname or alias.name] = _F
    return bound


def _constant_value(node: ast.AST, constants: dict[str, float], modules: dict[str, str]) -> float:
    """Evaluate a module-level numeric constant without running it; refuse anything else.

    Python evaluates these when the module loads, so they must stay cheap: the value is computed here
    in floating point, and one that overflows (``10 ** 10 ** 10``) is refused before it could run.
    """
    line = getattr(node, "lineno", None)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        value = float(node.value) if abs(node.value) <= _MAX_CONSTANT else math.inf
    elif isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id]  # an earlier numeric constant, never a module
    elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "math" \
            and modules.get("math") == "math" and node.attr in allowlist.MATH_CONSTANTS:
        return float(getattr(math, node.attr))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _constant_value(node.operand, constants, modules)
        value = -value if isinstance(node.op, ast.USub) else value
    elif isinstance(node, ast.BinOp) and type(node.op) in _OPERATIONS:
        left, right = _constant_value(node.left, constants, modules), _constant_value(node.right, constants, modules)
        try:
            value = _apply(node.op, left, right)
        except (OverflowError, ZeroDivisionError, ValueError) as err:
            raise LossRejected(f"module-level constant cannot be evaluated ({err})", line) from None
        if not math.isfinite(left) or not math.isfinite(right):
            return value
    else:
        raise LossRejected("module-level assignments may only bind numeric constants", line)
    if math.isfinite(value) and abs(value) <= _MAX_CONSTANT:
        return value
    raise LossRejected(f"module-level constant is too large (|value| > {_MAX_CONSTANT:g})", line)


_OPERATIONS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
               ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: math.pow}


def _apply(op: ast.operator, left: float, right: float) -> float:
    return _OPERATIONS[type(op)](left, right)


class _LossChecker(ast.NodeVisitor):
    """Walks the body of one top-level function: every node kind, name and attribute must be listed."""

    def __init__(self, modules: dict[str, str], bound: set[str]):
        self.modules = modules  # local alias -> module ("F" -> "torch.nn.functional")
        self.bound = bound  # parameters, locals, constants and helpers: names the loss defines itself

    def refuse(self, reason: str, node: ast.AST) -> None:
        raise LossRejected(reason, getattr(node, "lineno", None))

    def generic_visit(self, node: ast.AST) -> None:
        if isinstance(node, ast.stmt) and not isinstance(node, _FUNCTION_STATEMENTS):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                self.refuse("imports are only allowed at the top of the file", node)
            self.refuse(f"statement '{type(node).__name__}' is not allowed in a loss", node)
        if isinstance(node, ast.JoinedStr):
            self.refuse("f-strings are not allowed", node)
        if isinstance(node, ast.expr) and not isinstance(node, _EXPRESSIONS):
            self.refuse(f"'{type(node).__name__}' is not allowed in a loss", node)
        if not isinstance(node, (*_FUNCTION_STATEMENTS, *_EXPRESSIONS, *_GRAMMAR)):
            self.refuse(f"'{type(node).__name__}' is not allowed in a loss", node)
        if isinstance(node, ast.keyword) and node.arg and node.arg.startswith("__"):
            self.refuse(f"keyword '{node.arg}' is not allowed", node)
        super().generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        name = node.id
        if name.startswith("__"):
            self.refuse(f"use of '{name}' is not allowed (dunder name)", node)
        if not isinstance(node.ctx, ast.Load):
            if name in self.modules or name in _BUILTIN_NAMES:
                self.refuse(f"name '{name}' may not be rebound (a module or builtin)", node)
            return
        if name in self.modules:
            self.refuse(f"module '{name}' may only be used as {name}.<listed name>", node)
        if name not in self.bound and name not in allowlist.BUILTINS:
            hint = " (import it first)" if name in ("torch", "F", "math") else ""
            self.refuse(f"use of '{name}' is not allowed{hint}", node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        attr = node.attr
        if not isinstance(node.ctx, ast.Load):
            self.refuse(f"assigning to attribute '{attr}' is not allowed", node)
        if attr in ("format", "format_map"):
            self.refuse(f"attribute '{attr}' is not allowed (string formatting)", node)
        root, attrs = split_chain(node)
        for part in reversed(attrs):
            if part.startswith("_"):
                self.refuse(f"access to private or dunder attribute '{part}' is not allowed", node)
        if isinstance(root, ast.Name) and root.id in self.modules:
            self.check_module_chain([root.id, *attrs], node)
            return
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, (str, bytes)):
            self.refuse("attribute access on a string literal is not allowed", node)
        self.visit(node.value)  # first, so the first problem in reading order is the one named
        if attr.endswith("_"):
            self.refuse(f"in-place method '{attr}' is not allowed", node)
        if attr not in allowlist.VALUE_ATTRS:
            self.refuse(f"attribute '{attr}' is not allowed (not a listed tensor method or attribute)", node)

    def check_module_chain(self, chain: list[str], node: ast.AST) -> None:
        """``torch.clamp``, ``F.relu``, ``torch.nn.functional.relu``, ``torch.finfo(...)`` is a call: listed only."""
        module, parts = self.modules[chain[0]], chain[1:]
        if module == "torch" and parts[:2] == ["nn", "functional"]:
            module, parts = _F, parts[2:]
        if not parts:
            self.refuse(f"module '{'.'.join(chain)}' may only be used as {'.'.join(chain)}.<listed name>", node)
        if parts[0] not in allowlist.TABLES[module]:
            self.refuse(f"attribute '{parts[0]}' is not allowed: '{module}.{parts[0]}' is not on the allow-list", node)
        for part in parts[1:]:
            if part not in allowlist.VALUE_ATTRS:
                self.refuse(f"attribute '{part}' is not allowed (not a listed tensor method or attribute)", node)

    def visit_Call(self, node: ast.Call) -> None:
        self.visit(node.func)
        if not isinstance(node.func, (ast.Name, ast.Attribute)):
            self.refuse("only a named function or method may be called", node)
        for arg in [*node.args, *(k.value for k in node.keywords)]:
            if isinstance(arg, ast.Starred):
                self.refuse("star arguments are not allowed", arg)
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                if "__" in arg.value or not _PLAIN_STRING.fullmatch(arg.value):
                    self.refuse(f"string argument {arg.value[:20]!r} is not allowed (plain words only)", arg)
                continue
            self.visit(arg)
        for keyword in node.keywords:
            if keyword.arg is None:
                self.refuse("'**' arguments are not allowed", node)
            if keyword.arg.startswith("__"):
                self.refuse(f"keyword '{keyword.arg}' is not allowed", node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, bytes):
            self.refuse("bytes literals are not allowed", node)
        if isinstance(node.value, str):
            self.refuse("string literals are only allowed as docstrings or plain call arguments", node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if isinstance(node.op, ast.Mod) and isinstance(node.left, (ast.Constant, ast.JoinedStr)) \
                and isinstance(getattr(node.left, "value", ""), (str, bytes)):
            self.refuse("'%' formatting of a string is not allowed", node)
        self.generic_visit(node)

    def visit_Expr(self, node: ast.Expr) -> None:
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return  # a docstring or a string used as a comment: inert
        self.generic_visit(node)


def _check_annotation(annotation: ast.expr | None, checker: _LossChecker) -> None:
    """Annotations run when the function is defined: only type names (``float``, ``torch.Tensor``)."""
    if annotation is None:
        return
    if isinstance(annotation, ast.Name) and annotation.id in _ANNOTATION_NAMES:
        return
    if isinstance(annotation, ast.Attribute):
        root, attrs = split_chain(annotation)
        if isinstance(root, ast.Name) and root.id in checker.modules and len(attrs) == 1:
            checker.visit(annotation)
            return
    raise LossRejected("annotations may only be float, int, bool or torch.Tensor", annotation.lineno)


def _bound_names(tree: ast.Module) -> set[str]:
    """Every name the loss binds itself: constants, functions, parameters, locals, loop targets."""
    bound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    bound |= {a.arg for a in ast.walk(tree) if isinstance(a, ast.arg)}
    return bound | {f.name for f in tree.body if isinstance(f, ast.FunctionDef)}


def _check_function(fn: ast.FunctionDef, checker: _LossChecker, constants: dict[str, float]) -> None:
    line = fn.lineno
    if fn.decorator_list:
        raise LossRejected("decorators are not allowed", fn.decorator_list[0].lineno)
    if fn.name.startswith("__") or fn.name in _BUILTIN_NAMES or fn.name in checker.modules:
        raise LossRejected(f"function name '{fn.name}' is not allowed", line)
    args = fn.args
    if args.vararg or args.kwarg:
        raise LossRejected("'*args' and '**kwargs' parameters are not allowed", line)
    for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
        if arg.arg.startswith("__") or arg.arg in _BUILTIN_NAMES or arg.arg in checker.modules:
            raise LossRejected(f"argument name '{arg.arg}' is not allowed", line)
        _check_annotation(arg.annotation, checker)
    _check_annotation(fn.returns, checker)
    for default in [*args.defaults, *(d for d in args.kw_defaults if d is not None)]:
        try:
            _constant_value(default, constants, checker.modules)
        except LossRejected:
            raise LossRejected("default argument values must be numeric constants", line) from None
    for stmt in fn.body:
        checker.visit(stmt)


def check_module(tree: ast.Module) -> list[ast.FunctionDef]:
    """Enforce the module shape and the allow-list on a parsed loss; return its public functions.

    Top level: a docstring, allowed imports, numeric constants (evaluated here, bounded) and function
    definitions, nothing else, so loading the module runs nothing but imports and definitions.
    """
    for node in ast.walk(tree):  # literals no loss needs, refused wherever they stand
        if isinstance(node, ast.Constant) and isinstance(node.value, bytes):
            raise LossRejected("bytes literals are not allowed", node.lineno)
        if isinstance(node, ast.JoinedStr):
            raise LossRejected("f-strings are not allowed", node.lineno)
    modules: dict[str, str] = {}
    for stmt in tree.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            modules.update(_import_aliases(stmt))
    for alias, module in modules.items():
        if alias.startswith("__") or alias in _BUILTIN_NAMES or _CANONICAL.get(alias, module) != module:
            raise LossRejected(f"import alias '{alias}' is not allowed for module '{module}'", None)
    checker = _LossChecker(modules, _bound_names(tree))
    public: list[ast.FunctionDef] = []
    constants: dict[str, float] = {}
    for index, stmt in enumerate(tree.body):
        line = stmt.lineno
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and index == 0:
            if not isinstance(stmt.value.value, str):
                raise LossRejected("only a docstring may stand as a bare expression", line)
            continue
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(stmt, ast.Assign):
            if not all(isinstance(t, ast.Name) for t in stmt.targets):
                raise LossRejected("module-level assignments may only bind numeric constants", line)
            value = _constant_value(stmt.value, constants, modules)
            for target in stmt.targets:
                checker.visit(target)
                constants[target.id] = value
            continue
        if isinstance(stmt, ast.FunctionDef):
            _check_function(stmt, checker, constants)
            if not stmt.name.startswith("_"):
                public.append(stmt)
            continue
        raise LossRejected(f"top-level '{type(stmt).__name__}' is not allowed (only imports, numeric "
                           "constants and function definitions)", line)
    return public
