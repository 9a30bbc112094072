"""The loss contract: static checks, loading, and normalisation of loss source code.

A loss is Python source defining exactly one public function

    def name(policy_chosen_logps, policy_rejected_logps,
             reference_chosen_logps, reference_rejected_logps, beta) -> per-example losses [batch]

(contract v2, ``contract/inputs.py``: or the two policy log-probs, any of the references (both or neither),
``chosen_lengths``, ``rejected_lengths``, ``chosen_nll``, in that order, then beta) that may import only
``torch``, ``torch.nn.functional`` and ``math``. The static check is an
allow-list (tables in ``allowlist.py``, the AST walk in ``allowlist_check.py``): it executes
nothing, names the line of the first problem it finds, and a module that passes it only imports
and defines things when loaded, so ``load_loss`` (which runs exactly this check first) is harmless
in any process. It is not the only layer: candidate code from the discovery loop is only ever
executed inside sandboxed worker processes (see ``sandbox/``).
"""

from __future__ import annotations

import ast
import builtins
import codecs
import hashlib
import re
import textwrap
import tokenize
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from discopop.contract import allowlist
from discopop.contract.allowlist_check import ALLOWED_IMPORTS, LossRejected, check_module
from discopop.contract.inputs import V1_INPUTS, signature_problem
from discopop.contract.syntax import parse

LOSS_ARGS = (
    "policy_chosen_logps",
    "policy_rejected_logps",
    "reference_chosen_logps",
    "reference_rejected_logps",
    "beta",
)


@dataclass(frozen=True)
class StaticInfo:
    """What the static check learnt about a valid loss."""

    function_name: str
    uses_beta: bool
    inputs: tuple[str, ...] = V1_INPUTS  # the tensor inputs it declares, in call order (``contract.inputs``)


# Characters that end a line for ``str.splitlines`` (or a terminal) but not for Python's parser, or that make the
# text shown differ from the text run (bidirectional overrides): a docstring holding them can hide live code from
# a reader, a diff or any tool that cuts the source by line. Lone ``\r`` moves a terminal's cursor back.
_HIDDEN_CHARS = {
    "\x00": "NUL", "\x0b": "vertical tab", "\x0c": "form feed", "\x1c": "file separator", "\x1d": "group separator",
    "\x1e": "record separator", "\x85": "next-line (U+0085)", "\u2028": "line separator (U+2028)",
    "\u2029": "paragraph separator (U+2029)", **{chr(c): f"bidirectional control (U+{c:04X})"
                                                  for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]},
}
_HIDDEN_RE = re.compile("[" + "".join(re.escape(c) for c in _HIDDEN_CHARS) + "]|\r(?!\n)")
_COOKIE_RE = re.compile(r"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)", re.ASCII)


def check_text(source: str) -> None:
    """Refuse text whose lines or encoding Python reads differently from a person or a line-based tool.

    A coding cookie other than utf-8 makes ``import`` decode the file differently (utf-7 turns ``+AAo-`` into a
    newline: a hidden live line in what reads as a comment); vertical-space and line-separator characters split
    lines for ``str.splitlines`` but not for the parser. Raises :class:`LossRejected` naming the first one.
    """
    for lineno, line in enumerate(source.split("\n")[:2], start=1):
        match = _COOKIE_RE.match(line.lstrip("\ufeff") if lineno == 1 else line)
        if match:
            try:
                name = codecs.lookup(match.group(1)).name
            except LookupError:
                name = match.group(1)
            if name != "utf-8":
                raise LossRejected(f"coding cookie {match.group(1)!r}: a loss must be utf-8", lineno)
    hidden = _HIDDEN_RE.search(source)
    if hidden:
        char = hidden.group()
        what = "carriage return not followed by a newline" if char == "\r" else _HIDDEN_CHARS[char]
        raise LossRejected(f"{what} in the source: only \\n may end a line", source.count("\n", 0, hidden.start()) + 1)


def decode_source(data: bytes, origin: str = "<bytes>") -> str:
    """Loss file bytes as Python's import decodes them (BOM, coding cookie), then :func:`check_text`.

    Reading as utf-8 regardless would check a different text than ``import`` runs.
    """
    try:
        encoding, _ = tokenize.detect_encoding(iter(data.splitlines(keepends=True)).__next__)
    except SyntaxError as err:
        raise LossRejected(f"{origin}: {err.msg}", None) from None
    if codecs.lookup(encoding).name not in ("utf-8", "utf-8-sig"):  # "UTF8", "u8": utf-8 under another name
        raise LossRejected(f"{origin}: coding cookie {encoding!r}: a loss must be utf-8", None)
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        raise LossRejected(f"{origin}: not valid utf-8 ({err.reason} at byte {err.start})", None) from None
    check_text(text)
    return text


def static_check(source: str) -> StaticInfo:
    """Check ``source`` against the loss contract and the allow-list without executing it.

    A module that passes can only import torch, torch.nn.functional and math, bind numeric constants
    and define functions: loading it runs nothing else, in any process. Inside the functions, every
    name, attribute and node kind must be on the allow-list (``discopop.contract.allowlist``). The original
    DiscoPOP method form is accepted: it is checked as ``normalise_loss`` rewrites it (line numbers
    then refer to that text). Raises :class:`LossRejected` (a ``ValueError``) naming the first
    problem and its line. Text Python would read differently (:func:`check_text`) is refused first.
    """
    check_text(source)
    try:
        return _static_check(normalise_loss(source))
    except (RecursionError, MemoryError):
        raise LossRejected("code is nested too deeply to check") from None


def _static_check(source: str) -> StaticInfo:
    try:
        tree = parse(source)
    except SyntaxError as err:
        raise LossRejected(f"syntax error: {err.msg}", err.lineno) from None
    public = check_module(tree)
    if len(public) != 1:
        names = ", ".join(f.name for f in public) or "none"
        line = public[1].lineno if len(public) > 1 else None
        raise LossRejected(f"expected exactly one public function, found {len(public)} ({names})", line)
    fn = public[0]
    args = fn.args
    got = tuple(a.arg for a in args.posonlyargs + args.args)
    if got != LOSS_ARGS or args.vararg or args.kwarg or args.kwonlyargs:
        problem = "keyword-only parameters are not allowed" if args.kwonlyargs else signature_problem(got)
        if problem or args.vararg or args.kwarg:
            raise LossRejected(f"signature of '{fn.name}' must be ({', '.join(LOSS_ARGS)}) or a contract-v2 form: "
                               f"{problem or 'no *args or **kwargs'}", fn.lineno)
    uses_beta = any(isinstance(n, ast.Name) and n.id == "beta" for n in ast.walk(fn))
    return StaticInfo(function_name=fn.name, uses_beta=uses_beta, inputs=got[:-1])


def signature_inputs(source: str) -> tuple[str, ...]:
    """The tensor inputs a loss's signature declares (``contract.inputs``), read without the allow-list walk.

    For the trusted side of the oracle (the worker), which reads what to send from the code it sent rather than
    from the oracle's answer, and leaves judging the code to the oracle's ``LOAD``: code whose one public function
    has no valid v1 or v2 signature (or that does not parse) reads as v1, and the oracle refuses it anyway.
    """
    try:
        tree = parse(normalise_loss(source))
    except (SyntaxError, LossRejected, RecursionError, MemoryError, ValueError):
        return V1_INPUTS
    public = [f for f in tree.body if isinstance(f, ast.FunctionDef) and not f.name.startswith("_")]
    if len(public) != 1:
        return V1_INPUTS
    params = tuple(a.arg for a in public[0].args.posonlyargs + public[0].args.args)
    return params[:-1] if params and signature_problem(params) is None else V1_INPUTS


class _MethodToFunction(ast.NodeTransformer):
    """``self.beta`` -> ``beta``; any other use of ``self`` is refused (a loss has no trainer state)."""

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        if isinstance(node.value, ast.Name) and node.value.id == "self":
            if node.attr != "beta" or not isinstance(node.ctx, ast.Load):
                raise LossRejected(f"'self.{node.attr}' is not available to a loss (only self.beta)", node.lineno)
            return ast.copy_location(ast.Name(id="beta", ctx=ast.Load()), node)
        return self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id == "self":
            raise LossRejected("'self' may only be used as self.beta", node.lineno)
        return node


def _method_to_function(fn: ast.FunctionDef) -> None:
    """Drop ``self``, add ``beta`` last, rewrite ``self.beta``."""
    args = fn.args
    params = args.posonlyargs if args.posonlyargs else args.args
    params.pop(0)
    if "beta" not in {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}:
        args.args.append(ast.arg(arg="beta"))
    _MethodToFunction().visit(fn)


_IMPORT = (ast.Import, ast.ImportFrom)
_BLOCKS = ("body", "orelse")  # the statement lists of a function body's compound statements (if, for)


def _has_body_import(fn: ast.FunctionDef) -> bool:
    return any(isinstance(node, _IMPORT) for stmt in fn.body for node in ast.walk(stmt))


def _take_imports(block: list[ast.stmt], taken: list[ast.stmt]) -> list[ast.stmt]:
    """``block`` without its import statements, at any depth (appended to ``taken`` in reading order)."""
    kept = []
    for stmt in block:
        if isinstance(stmt, _IMPORT):
            taken.append(stmt)
            continue
        for name in _BLOCKS:
            inner = getattr(stmt, name, None)
            if isinstance(inner, list) and inner:
                setattr(stmt, name, _take_imports(inner, taken) or [ast.Pass()])
        kept.append(stmt)
    return kept


_IMPLIED = {"torch": "import torch", "F": "import torch.nn.functional as F"}


def _implied_imports(tree: ast.Module, hoisted: list[ast.stmt]) -> list[ast.stmt]:
    """``torch`` and ``F`` for a method that uses them unimported: the DiscoPOP trainer had both in scope."""
    bound = {(a.asname or a.name).split(".")[0] for s in [*tree.body, *hoisted]
             if isinstance(s, (ast.Import, ast.ImportFrom)) for a in s.names}
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    return [parse(_IMPLIED[name]).body[0] for name in _IMPLIED if name in used and name not in bound]


def normalise_loss(source: str) -> str:
    """Rewrite the original DiscoPOP method form, and imports inside function bodies, into the contract form;
    return any other text as is.

    The DiscoPOP paper's code (and prompts that follow it) write a loss as a trainer method:
    ``def name(self, policy_chosen_logps, ..., reference_rejected_logps)`` reading ``self.beta``
    and importing ``torch.nn.functional as F`` inside the body, often still indented. Each top-level
    function whose first parameter is ``self`` loses it, gains ``beta`` as its last parameter and has
    ``self.beta`` replaced by ``beta``; any other use of ``self`` is refused (:class:`LossRejected`).
    In every top-level function, method or plain, import statements in the body (at any depth) move to the
    top of the file: the paper's losses are also written as plain functions importing in the body, and
    moving an import changes nothing the loss computes. Which modules may be imported is the static check's
    business: a moved ``import os`` is refused there, by name. Nothing is executed; the result still has to
    pass ``static_check``.
    """
    try:
        tree = parse(textwrap.dedent(source))
    except SyntaxError:
        return source  # the static check reports it
    functions = [f for f in tree.body if isinstance(f, ast.FunctionDef)]
    methods = [f for f in functions if [a.arg for a in (f.args.posonlyargs + f.args.args)][:1] == ["self"]]
    importing = [f for f in functions if _has_body_import(f)]
    if not methods and not importing:
        return source
    seen = {ast.dump(s) for s in tree.body if isinstance(s, _IMPORT)}
    hoisted: list[ast.stmt] = []
    for fn in methods:
        _method_to_function(fn)
    for fn in importing:
        taken: list[ast.stmt] = []
        fn.body = _take_imports(fn.body, taken) or [ast.Pass()]
        for stmt in taken:
            if ast.dump(stmt) not in seen:
                seen.add(ast.dump(stmt))
                hoisted.append(stmt)
    if methods:  # only the method form had torch and F in scope (the DiscoPOP trainer's module)
        hoisted.extend(_implied_imports(tree, hoisted))
    top = 1 if tree.body and isinstance(tree.body[0], ast.Expr) and isinstance(tree.body[0].value, ast.Constant) else 0
    while top < len(tree.body) and isinstance(tree.body[top], (ast.Import, ast.ImportFrom)):
        top += 1
    tree.body[top:top] = hoisted
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


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
        return decode_source(path.read_bytes(), str(path)), str(path)
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
        check_text(source)
        source = normalise_loss(source)  # the text checked below is the text executed
        info = static_check(source)
    except LossRejected as err:
        raise LossRejected(f"{origin}: {err}", None) from None
    safe = {name: getattr(builtins, name) for name in allowlist.BUILTINS}
    safe["__import__"] = _restricted_import
    namespace: dict = {"__builtins__": safe, "__name__": "discopop_loss"}
    exec(compile(source, origin, "exec"), namespace)  # noqa: S102 - checked above, restricted builtins
    fn = namespace[info.function_name]
    fn.discopop_source = source
    fn.discopop_uses_beta = info.uses_beta
    fn.discopop_inputs = info.inputs
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
    tree = _StripDocstrings().visit(parse(source))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            node.name = "loss"
    return ast.unparse(ast.fix_missing_locations(tree))


def contract_form(source: str) -> str:
    """The contract form a worker loads for ``source`` (:func:`normalise_loss`: the DiscoPOP method form rewritten),
    which the archive keeps beside the text as proposed. Text that does not parse comes back as it is (nothing to
    rewrite); "" where a rewrite is refused (a method reading more of ``self`` than ``beta``) or cannot be done
    (too deep): such code is refused before anything runs, and storing its form never ends a run."""
    try:
        return normalise_loss(source)
    except (SyntaxError, LossRejected, RecursionError, MemoryError, ValueError):
        return ""


def code_hash(source: str) -> str:
    """Hash of the normalised code (a method-form loss hashes as its contract form); falls back to
    the raw text for code that does not parse or is too deep to rewrite (a 2,000-term sum: ``RecursionError``),
    so hashing never ends a run; unencodable characters (lone surrogates) are hashed as their escapes."""
    try:
        text = normalize_code(normalise_loss(source))
    except (SyntaxError, LossRejected, RecursionError, MemoryError, ValueError):
        text = source
    return hashlib.sha256(text.encode("utf-8", "backslashreplace")).hexdigest()[:16]
