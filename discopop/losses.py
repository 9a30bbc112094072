"""The loss contract: static checks, loading, and normalisation of loss source code.

A loss is Python source defining exactly one public function

    def name(policy_chosen_logps, policy_rejected_logps,
             reference_chosen_logps, reference_rejected_logps, beta) -> per-example losses [batch]

that may import only ``torch``, ``torch.nn.functional`` and ``math``. The static check here is
the cheap first layer of defence: it runs on the AST, executes nothing, and names the line of
the first problem it finds. It is not the only layer: candidate code from the discovery loop is
only ever executed inside sandboxed worker processes (see ``sandbox.py``).
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

LOSS_ARGS = (
    "policy_chosen_logps",
    "policy_rejected_logps",
    "reference_chosen_logps",
    "reference_rejected_logps",
    "beta",
)
ALLOWED_IMPORTS = {"torch", "torch.nn.functional", "math"}

# Builtins a numeric loss can reasonably need. Everything that reaches the file system, the
# interpreter or object internals is absent.
SAFE_BUILTINS = (
    "abs", "all", "any", "bool", "dict", "enumerate", "float", "int", "isinstance", "len",
    "list", "max", "min", "pow", "range", "reversed", "round", "sorted", "sum", "tuple",
    "zip", "ValueError", "ArithmeticError", "ZeroDivisionError", "True", "False", "None",
)  # fmt: skip
FORBIDDEN_NAMES = {
    "exec", "eval", "compile", "open", "__import__", "globals", "locals", "vars", "getattr",
    "setattr", "delattr", "hasattr", "input", "breakpoint", "exit", "quit", "help", "type",
    "object", "super", "memoryview", "bytearray", "classmethod", "staticmethod", "property",
    "print", "dir", "id", "callable", "iter", "next", "format", "chr", "ord", "os", "sys",
    "subprocess", "socket", "importlib", "builtins", "posix", "shutil", "pathlib", "ctypes",
}  # fmt: skip
# torch / F / math attributes that touch files, the network, processes, global state or
# compilation. Matched against every segment of an attribute chain (``torch.hub.load`` hits ``hub``).
FORBIDDEN_ATTRS = {
    "save", "load", "hub", "ops", "utils", "classes", "library", "cuda", "mps", "backends",
    "distributed", "multiprocessing", "jit", "compile", "package", "from_file", "storage",
    "untyped_storage", "serialization", "fx", "export", "onnx", "testing", "overrides",
    "profiler", "autograd", "manual_seed", "seed", "random", "set_num_threads",
    "set_num_interop_threads", "set_default_dtype", "set_default_tensor_type",
    "set_default_device", "set_grad_enabled", "no_grad", "enable_grad", "inference_mode",
    "use_deterministic_algorithms", "set_printoptions", "set_flush_denormal", "tofile",
    "numpy", "data", "data_ptr", "backward", "register_hook", "grad",
    "share_memory_", "set_", "resize_", "requires_grad_", "detach_", "format", "func",
    "pin_memory", "Generator", "get_rng_state", "set_rng_state", "sparse", "quantization",
    "futures", "monitor", "signal", "Module", "Parameter", "modules", "parameters",
}  # fmt: skip
# Modules that torch, F and math expose as attributes (``torch.os``, ``torch.sys``, ``F.np``, ...):
# reaching any of them is a way around the import allow-list.
MODULE_ATTRS = {
    "os", "sys", "builtins", "ctypes", "importlib", "inspect", "threading", "types", "np", "numpy",
    "subprocess", "socket", "shutil", "pickle", "io", "glob", "pathlib", "multiprocessing", "gc", "signal",
    "tempfile", "functools", "warnings", "weakref", "copyreg", "marshal", "linecache", "traceback", "platform",
    "sysconfig", "site", "codecs", "operator", "contextlib", "abc", "typing", "collections", "itertools",
    "dataclasses", "enum", "re", "json", "logging", "urllib", "http", "requests", "zipfile", "tarfile",
}  # fmt: skip
ALLOWED_STATEMENTS = (
    ast.FunctionDef, ast.Return, ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Expr, ast.If,
    ast.For, ast.Pass, ast.Assert, ast.Import, ast.ImportFrom,
)  # fmt: skip


class LossRejected(ValueError):
    """Static check failed. ``str(err)`` is one line naming the problem and its line."""

    def __init__(self, reason: str, line: int | None = None):
        self.reason = reason
        self.line = line
        super().__init__(f"line {line}: {reason}" if line else reason)


@dataclass(frozen=True)
class StaticInfo:
    """What the static check learnt about a valid loss."""

    function_name: str
    uses_beta: bool


def _attr_chain(node: ast.AST) -> list[str]:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return list(reversed(parts))


def _check_import(node: ast.Import | ast.ImportFrom) -> None:
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name not in ALLOWED_IMPORTS:
                raise LossRejected(f"import of '{alias.name}' is not allowed (only torch, "
                                   "torch.nn.functional, math)", node.lineno)
        return
    module = node.module or ""
    for alias in node.names:
        full = f"{module}.{alias.name}"
        if full not in ALLOWED_IMPORTS or node.level:
            raise LossRejected(f"'from {module} import {alias.name}' is not allowed (only torch, "
                               "torch.nn.functional, math)", node.lineno)


def _is_constant_expr(node: ast.AST, constants: set[str] | frozenset[str] = frozenset()) -> bool:
    """Module-level assignments may only bind numeric constants (no code runs at import)."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
    if isinstance(node, ast.UnaryOp):
        return _is_constant_expr(node.operand, constants)
    if isinstance(node, ast.BinOp):
        return _is_constant_expr(node.left, constants) and _is_constant_expr(node.right, constants)
    if isinstance(node, ast.Attribute):
        return _attr_chain(node) in (["math", "pi"], ["math", "e"], ["math", "inf"])
    if isinstance(node, ast.Name):
        return node.id in constants  # an earlier numeric constant, never a module
    return False


def _check_node(node: ast.AST) -> None:
    """Walk every node once; first forbidden construct raises."""
    for sub in ast.walk(node):
        line = getattr(sub, "lineno", None)
        if isinstance(sub, ast.stmt) and not isinstance(sub, ALLOWED_STATEMENTS):
            raise LossRejected(f"statement '{type(sub).__name__}' is not allowed in a loss", line)
        if isinstance(sub, (ast.Import, ast.ImportFrom)):
            raise LossRejected("imports are only allowed at the top of the file", line)
        if isinstance(sub, ast.FunctionDef) and sub is not node and sub.decorator_list:
            raise LossRejected("decorators are not allowed", line)
        if isinstance(sub, (ast.Await, ast.Yield, ast.YieldFrom, ast.NamedExpr)):
            raise LossRejected(f"'{type(sub).__name__}' is not allowed in a loss", line)
        if isinstance(sub, ast.Name):
            if sub.id in FORBIDDEN_NAMES or sub.id.startswith("__"):
                raise LossRejected(f"use of '{sub.id}' is not allowed", line)
        if isinstance(sub, ast.Attribute):
            if sub.attr.startswith("_"):
                raise LossRejected(f"access to private or dunder attribute '{sub.attr}' is not allowed", line)
            if isinstance(sub.ctx, (ast.Store, ast.Del)):
                raise LossRejected(f"assigning to attribute '{sub.attr}' is not allowed", line)
            if sub.attr in MODULE_ATTRS:
                raise LossRejected(f"reaching module '{sub.attr}' through an attribute is not allowed", line)
            if sub.attr in FORBIDDEN_ATTRS:
                raise LossRejected(f"attribute '{sub.attr}' is not allowed (files, processes, global "
                                   "state or autograd internals)", line)
            if sub.attr.endswith("_") and isinstance(sub.ctx, ast.Load):
                raise LossRejected(f"in-place method '{sub.attr}' is not allowed", line)
        if isinstance(sub, ast.Constant) and isinstance(sub.value, (str, bytes)):
            text = sub.value if isinstance(sub.value, str) else sub.value.decode("latin-1")
            if "__" in text or "{" in text:
                raise LossRejected("string constants may not contain '__' or format fields", line)
        if isinstance(sub, ast.arg) and sub.arg.startswith("__"):
            raise LossRejected(f"argument name '{sub.arg}' is not allowed", line)


def static_check(source: str) -> StaticInfo:
    """Check ``source`` against the loss contract without executing it.

    Raises :class:`LossRejected` (a ``ValueError``) naming the first problem and its line.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise LossRejected(f"syntax error: {err.msg}", err.lineno) from None
    public: list[ast.FunctionDef] = []
    constants: set[str] = set()
    for index, stmt in enumerate(tree.body):
        line = stmt.lineno
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and index == 0:
            if not isinstance(stmt.value.value, str):
                raise LossRejected("only a docstring may stand as a bare expression", line)
            continue
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            _check_import(stmt)
            continue
        if isinstance(stmt, ast.Assign):
            if not all(isinstance(t, ast.Name) for t in stmt.targets) or not _is_constant_expr(stmt.value, constants):
                raise LossRejected("module-level assignments may only bind numeric constants", line)
            _check_node(stmt)
            constants.update(t.id for t in stmt.targets)
            continue
        if isinstance(stmt, ast.FunctionDef):
            if stmt.decorator_list:
                raise LossRejected("decorators are not allowed", line)
            for default in stmt.args.defaults + [d for d in stmt.args.kw_defaults if d is not None]:
                if not _is_constant_expr(default, constants):
                    raise LossRejected("default argument values must be numeric constants", line)
            _check_node(stmt)
            if not stmt.name.startswith("_"):
                public.append(stmt)
            continue
        raise LossRejected(f"top-level '{type(stmt).__name__}' is not allowed (only imports, numeric "
                           "constants and function definitions)", line)
    if len(public) != 1:
        names = ", ".join(f.name for f in public) or "none"
        line = public[1].lineno if len(public) > 1 else None
        raise LossRejected(f"expected exactly one public function, found {len(public)} ({names})", line)
    fn = public[0]
    args = fn.args
    got = tuple(a.arg for a in args.posonlyargs + args.args)
    if got != LOSS_ARGS or args.vararg or args.kwarg or args.kwonlyargs:
        raise LossRejected(f"signature of '{fn.name}' must be ({', '.join(LOSS_ARGS)}), got ({', '.join(got)})",
                           fn.lineno)
    uses_beta = any(isinstance(n, ast.Name) and n.id == "beta" for n in ast.walk(fn))
    return StaticInfo(function_name=fn.name, uses_beta=uses_beta)


def _restricted_import(name, globals=None, locals=None, fromlist=(), level=0):  # noqa: A002
    if level or (name not in ALLOWED_IMPORTS and name != "torch.nn"):
        raise ImportError(f"import of '{name}' is not allowed in a loss")
    return builtins.__import__(name, globals, locals, fromlist, level)


def read_source(path_or_source: str | Path) -> tuple[str, str]:
    """Return ``(source, origin)``: a path is read, anything else is taken as source text."""
    text = str(path_or_source)
    if isinstance(path_or_source, Path) or (text.endswith(".py") and "\n" not in text):
        path = Path(text)
        if not path.is_file():
            raise ValueError(f"loss file not found: {path}")
        return path.read_text(encoding="utf-8"), str(path)
    return text, "<source>"


def load_loss(path_or_source: str | Path) -> Callable:
    """Static-check a loss (file path or source text) and return its function.

    Nothing is executed before the static check passes. The module runs with a restricted
    ``__builtins__``; use this for losses you have chosen to trust (a reference loss, an
    exported winner). The discovery loop never calls it in the main process: candidates are
    loaded only inside sandboxed workers.
    """
    source, origin = read_source(path_or_source)
    try:
        info = static_check(source)
    except LossRejected as err:
        raise LossRejected(f"{origin}: {err}", None) from None
    safe = {name: getattr(builtins, name) for name in SAFE_BUILTINS}
    safe["__import__"] = _restricted_import
    namespace: dict = {"__builtins__": safe, "__name__": "discopop_loss", "math": math}
    exec(compile(source, origin, "exec"), namespace)  # noqa: S102 - checked above, restricted builtins
    fn = namespace[info.function_name]
    fn.discopop_source = source
    fn.discopop_uses_beta = info.uses_beta
    return fn


class _StripDocstrings(ast.NodeTransformer):
    def _strip(self, node):
        self.generic_visit(node)
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
        return node

    visit_Module = _strip
    visit_FunctionDef = _strip


def normalize_code(source: str) -> str:
    """Canonical text of a loss: no comments or docstrings, public function renamed to ``loss``.

    Two proposals that differ only in naming of the public function, comments, docstrings or
    formatting normalise to the same text (and so the same ``code_hash``).
    """
    tree = _StripDocstrings().visit(ast.parse(source))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            node.name = "loss"
    return ast.unparse(ast.fix_missing_locations(tree))


def code_hash(source: str) -> str:
    """Hash of the normalised code; falls back to the raw text for code that does not parse."""
    try:
        text = normalize_code(source)
    except SyntaxError:
        text = source
    return hashlib.sha256(text.encode()).hexdigest()[:16]
