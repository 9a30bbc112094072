"""Offline evolutionary proposer: new losses are AST transformations of archived parents.

No LLM, no network. Parents come from the history by tournament selection; children are written by small
program transformations, each built to keep a loss finite on large inputs, so most children pass the numeric
checks. Most of them change the *shape* of the gradient, since Adam ignores a positive scale of the loss:
separate terms or weights for the chosen and rejected sides (``sides``), PFL-style reweighting of examples by
correctness or by how wrong the policy is (``reweight``), one shape below a threshold on beta*rho and another
above (``piecewise``), a target margin that depends on |rho| (``schedule``), a sigmoid-gated base term
(``mixture``); fewer swap a monotone map, shift the margin by a constant, cross two parents or retune constants.

A child that is statically its parent up to a positive scale, an added constant or a rescaled beta
(``same_behaviour``) trains exactly like it and is redrawn, never proposed. Child code is only static-checked
here, never executed.
"""

from __future__ import annotations

import ast
import copy
import functools
import math
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from discopop import behaviour_map, losses
from discopop.allowlist_check import dotted_parts as _chain
from discopop.proposers.base import Candidate, HistoryEntry, Proposer
from discopop.proposers.reference import PROPOSALS_DIR
from discopop.status import Status

# e**30 ~ 1e13: finite in float32 after weighting and batch means; larger arguments are clipped.
EXP = "torch.exp(torch.clamp(U, max=30.0))"
# Increasing maps: swapping one for another keeps -h(margin) decreasing in the margin.
INCREASING = {"logsigmoid": "F.logsigmoid(U)", "softplus": "F.softplus(U)", "relu": "torch.relu(U)",
              "tanh": "torch.tanh(U)", "exp": EXP}
# A sigmoid is usually a mixture weight, so it only becomes another map onto [0, 1].
UNIT = {"tanh01": "0.5 * (torch.tanh(U) + 1.0)", "hardsigmoid": "torch.clamp(0.5 + 0.25 * U, 0.0, 1.0)"}
# Increasing, sign-preserving reshapings of a raw margin E; C is a new positive constant (centre value).
WRAPS = {"softclip": ("C * torch.tanh(E / C)", 10.0), "floor": ("F.softplus(E + C) - math.log1p(math.exp(C))", 5.0)}
# Decreasing base terms of the beta-scaled margin X, finite for |X| in the hundreds.
BASE_TERMS = {"logistic": "-F.logsigmoid(X)", "exp": "torch.exp(-torch.clamp(X, min=-30.0))",
              "hinge": "torch.relu(1.0 - X)", "smoothhinge": "F.softplus(1.0 - X)", "square": "(X - 1.0) ** 2 / 4.0",
              "sigmoid": "1.0 - torch.sigmoid(X)", "tanh": "1.0 - torch.tanh(X)"}
# Crossover children hold both parents whole; this stops nested crossovers growing without bound.
MAX_CODE_CHARS = 8000
TAGS = {*INCREASING, *UNIT, *WRAPS, *BASE_TERMS, "sigmoid", "mix", "margin", "scale", "x", "tune",
        "chosen", "rejected", "weighted", "focus", "correct", "piecewise", "schedule"}
POLICY = {"policy_chosen_logps", "policy_rejected_logps"}


class _Skip(Exception):
    """The operator does not apply to this parent; the proposer tries again."""


@dataclass(frozen=True)
class _Parent:
    id: int | None
    name: str
    code: str
    fitness: float | None
    hash: str


class _Sub(ast.NodeTransformer):
    """Replace every node for which ``pick`` returns a substitute (``None``: keep it and descend)."""

    def __init__(self, pick: Callable[[ast.AST], ast.AST | None]):
        self.pick = pick

    def visit(self, node: ast.AST) -> ast.AST:
        new = self.pick(node)
        return self.generic_visit(node) if new is None else new


def _expr(template: str, **subs: ast.expr) -> ast.expr:
    """Parse a template whose single-letter placeholders stand for sub-expressions."""
    pick = lambda n: copy.deepcopy(subs[n.id]) if isinstance(n, ast.Name) and n.id in subs else None  # noqa: E731
    return _Sub(pick).visit(ast.parse(template, mode="eval").body)


def _name(ident: str) -> ast.Name:
    return ast.Name(id=ident, ctx=ast.Load())


def _assign(ident: str, value: ast.expr) -> ast.Assign:
    return ast.Assign(targets=[ast.Name(id=ident, ctx=ast.Store())], value=value)


def _kind(node: ast.AST) -> str | None:
    """'tanh' for a one-argument call torch.tanh(u) (or F.*) of a map the mutate operator knows."""
    if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords and len(_chain(node.func)) == 2:
        head, kind = _chain(node.func)
        return kind if head in ("torch", "F") and kind in (*INCREASING, "sigmoid") else None
    return None


def _loaded(node: ast.AST) -> Counter:
    return Counter(n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load))


def _functions(tree: ast.Module) -> list[ast.FunctionDef]:
    return [s for s in tree.body if isinstance(s, ast.FunctionDef)]


def _public(tree: ast.Module) -> ast.FunctionDef:
    return next(f for f in _functions(tree) if not f.name.startswith("_"))


def _fresh(base: str, taken: set[str]) -> str:
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


def _all_names(tree: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {f.name for f in _functions(tree)}


def _add_constant(tree: ast.Module, base: str, value: float) -> ast.Name:
    """Bind a new module-level constant (where tune can reach it later)."""
    ident = _fresh(base, _all_names(tree))
    tree.body.insert(0, _assign(ident, ast.Constant(value)))
    return _name(ident)


def _sig(value: float) -> float:
    return float(f"{value:.4g}")


def _lognormal(rng: random.Random, centre: float, sigma: float) -> float:
    return _sig(centre * math.exp(rng.gauss(0.0, sigma)))


def _margin_site(fn: ast.FunctionDef) -> ast.Assign | None:
    """The assignment that defines a function's margin: the first one reading both policy log-probs."""
    return next((s for s in fn.body if isinstance(s, ast.Assign) and len(s.targets) == 1
                 and isinstance(s.targets[0], ast.Name) and POLICY <= set(_loaded(s.value))), None)


def _margin_sites(tree: ast.Module) -> list[ast.Assign]:
    return [site for fn in _functions(tree) if (site := _margin_site(fn)) is not None]


def _scaled_margin(fn: ast.FunctionDef) -> ast.expr:
    """The parent's beta-scaled margin if it names one, else beta * rho (written out if need be)."""
    site = _margin_site(fn)
    if site is None:
        return _expr("beta * (P - Q - (R - S))", **dict(zip("PQRS", map(_name, losses.LOSS_ARGS[:4]), strict=True)))
    rho = _name(site.targets[0].id)
    scaled = {ast.dump(_expr("beta * R", R=rho)), ast.dump(_expr("R * beta", R=rho))}
    named = (s.targets[0].id for s in fn.body if isinstance(s, ast.Assign) and isinstance(s.targets[0], ast.Name)
             and ast.dump(s.value) in scaled)
    ident = next(named, None)
    return _name(ident) if ident else _expr("beta * R", R=rho)


def _rename(tree: ast.Module, mapping: dict[str, str]) -> None:
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in mapping:
            node.id = mapping[node.id]
        elif isinstance(node, ast.FunctionDef) and node.name in mapping:
            node.name = mapping[node.name]


# --- operators: each takes parsed parents and the RNG and returns (child tree, name tag, what it did) ---


def op_mutate(trees: list[ast.Module], rng: random.Random) -> tuple[ast.Module, str, str]:
    """Swap a monotone map for another of the same kind, or reshape a margin with an increasing wrap."""
    tree, sites = trees[0], _margin_sites(trees[0])
    calls = [n for n in ast.walk(tree) if _kind(n)]
    if calls and (not sites or rng.random() < 0.6):
        call = rng.choice(calls)
        old, arg = _kind(call), call.args[0]
        table = UNIT if old == "sigmoid" else INCREASING
        new = rng.choice(sorted(k for k in table if k != old))
        if old == "exp" and isinstance(arg, ast.Call) and _chain(arg.func)[-1:] == ["clamp"] and arg.args:
            arg = arg.args[0]  # drop the overflow guard; EXP re-adds it where exp survives
        tree = _Sub(lambda n: _expr(table[new], U=arg) if n is call else None).visit(tree)
        return tree, new, f"swapped {'.'.join(_chain(call.func))} for {new}"
    if not sites:
        raise _Skip("no margin to wrap")
    site, kind = rng.choice(sites), rng.choice(sorted(WRAPS))
    template, centre = WRAPS[kind]
    site.value = _expr(template, E=site.value, C=_add_constant(tree, kind.upper(), _lognormal(rng, centre, 0.5)))
    return tree, kind, f"wrapped the margin '{site.targets[0].id}' in a {kind}"


def op_mixture(trees: list[ast.Module], rng: random.Random) -> tuple[ast.Module, str, str]:
    """loss = (1 - w) * A + w * B, w = sigmoid(x / tau): A is the parent's loss or a base term, B a base term."""
    tree = trees[0]
    fn = _public(tree)
    returns = [n for n in ast.walk(fn) if isinstance(n, ast.Return)]
    if len(returns) != 1 or fn.body[-1] is not returns[0] or returns[0].value is None:
        raise _Skip("needs a single final return")
    taken, scaled = _all_names(tree), _scaled_margin(fn)
    x, gate = scaled if isinstance(scaled, ast.Name) else _name(_fresh("mix_margin", taken)), _fresh("mix_gate", taken)
    b_kind = rng.choice(sorted(BASE_TERMS))
    a_kind = "the parent's loss" if rng.random() < 0.5 else rng.choice(sorted(set(BASE_TERMS) - {b_kind}))
    tau = _add_constant(tree, "TAU", _sig(math.exp(rng.uniform(math.log(0.1), math.log(2.0)))))
    body = [_assign(gate, _expr("torch.sigmoid(X / T)", X=x, T=tau))]
    body[:0] = [] if scaled is x else [_assign(x.id, scaled)]
    if a_kind in BASE_TERMS:
        a = _expr(BASE_TERMS[a_kind], X=x)
    else:
        a = _name(_fresh("base_loss", taken))
        body.insert(0, _assign(a.id, returns[0].value))
    mix = _expr("(1.0 - W) * A + W * B", W=_name(gate), A=a, B=_expr(BASE_TERMS[b_kind], X=x))
    fn.body[-1:] = [*body, ast.Return(value=mix)]
    return tree, f"{b_kind}_mix", f"gated {a_kind} into a {b_kind} term by a sigmoid of the scaled margin"


def op_margin(trees: list[ast.Module], rng: random.Random) -> tuple[ast.Module, str, str]:
    """Demand a margin: rho - m, m > 0 (rescaling rho is only a change of beta, so this operator never does it)."""
    tree, sites = trees[0], _margin_sites(trees[0])
    if not sites:
        raise _Skip("no margin to shift")
    site = rng.choice(sites)
    site.value = _expr("E - M", E=site.value, M=_add_constant(tree, "MARGIN", _lognormal(rng, 2.0, 0.5)))
    return tree, "margin", f"shifted '{site.targets[0].id}'"


def _merge_second(first: ast.Module, second: ast.Module) -> tuple[ast.Module, str]:
    """One module holding ``first`` and ``second`` (docstrings dropped), and the name ``second``'s loss now has.

    ``second``'s loss becomes a private helper and its top-level names that clash with ``first``'s are
    renamed; fresh names are drawn from one set, so no two coincide.
    """
    first_names = _all_names(first)
    taken = first_names | _all_names(second)
    top = {t.id for s in second.body if isinstance(s, ast.Assign) for t in s.targets if isinstance(t, ast.Name)}
    top |= {f.name for f in _functions(second) if f.name.startswith("_")}
    mapping = {n: _fresh(n, taken) for n in sorted(top) if n in first_names}
    helper = mapping[_public(second).name] = _fresh(f"_{_root(_public(second).name)}_part", taken)
    _rename(second, mapping)
    body = [s for s in first.body + second.body if not isinstance(s, ast.Expr)]
    return ast.Module(body=body, type_ignores=[]), helper


def op_crossover(trees: list[ast.Module], rng: random.Random) -> tuple[ast.Module, str, str]:
    """a * L1 + (1 - a) * L2, each parent kept whole as a private helper; names of L2 that clash are renamed."""
    first, second = trees
    part_a = _fresh(f"_{_root(_public(first).name)}_part", _all_names(first))
    _rename(first, {_public(first).name: part_a})
    tree, part_b = _merge_second(first, second)
    weight = _add_constant(tree, "MIX", _sig(rng.uniform(0.2, 0.8)))
    fn = ast.parse(f"def child({', '.join(losses.LOSS_ARGS)}):\n    pass\n").body[0]
    args = list(map(_name, losses.LOSS_ARGS))
    calls = [ast.Call(func=_name(part), args=args, keywords=[]) for part in (part_a, part_b)]
    fn.body = [ast.Return(value=_expr("W * P + (1.0 - W) * Q", W=weight, P=calls[0], Q=calls[1]))]
    tree.body.append(fn)
    return tree, "x", "took a weighted sum of the two losses"


def _tunable(node: ast.AST, parents: dict[ast.AST, ast.AST], module: ast.Module) -> bool:
    """Floats (and module-level numbers) other than 0 and 1, that are neither exponents nor clamp bounds."""
    if not isinstance(node, ast.Constant) or type(node.value) not in (int, float) or node.value in (0, 1):
        return False
    child, up = node, parents.get(node)
    while isinstance(up, ast.UnaryOp):
        child, up = up, parents.get(up)
    if isinstance(up, ast.keyword) or (isinstance(up, ast.BinOp) and isinstance(up.op, ast.Pow) and up.right is child):
        return False
    return isinstance(node.value, float) or (isinstance(up, ast.Assign) and up in module.body)


def op_tune(trees: list[ast.Module], rng: random.Random) -> tuple[ast.Module, str, str]:
    """Perturb one or two constants multiplicatively (log-normal); values in (0, 1) move in logit space."""
    tree = trees[0]
    parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
    sites = [n for n in ast.walk(tree) if _tunable(n, parents, tree)]
    if not sites:
        raise _Skip("no constants to tune")
    for node in rng.sample(sites, min(len(sites), rng.choice((1, 2)))):
        v, step = float(node.value), rng.gauss(0.0, 0.3)
        node.value = _sig(1 / (1 + math.exp(-math.log(v / (1 - v)) - step)) if 0 < v < 1 else v * math.exp(step))
    return tree, "tune", "retuned its constants"


# --- shape-changing operators: each writes a new public function around the parent kept whole as a helper ---


def _as_helper(tree: ast.Module, taken: set[str]) -> str:
    """Rename the parent's public function to a private helper (so a new public function can call it)."""
    helper = _fresh(f"_{_root(_public(tree).name)}_part", taken | _all_names(tree))
    _rename(tree, {_public(tree).name: helper})
    return helper


def _with_public(tree: ast.Module, body: str, **names: str) -> ast.Module:
    """Append ``def child(<loss args>)`` whose body is ``body`` (``{rho}``, ``{x}``, ... filled from ``names``).

    Every body may use ``rho`` (the log-ratio margin), ``x`` (beta * rho) and ``chosen_drift`` /
    ``rejected_drift`` (the policy-minus-reference log-prob of each side), bound at the top.
    """
    pc, pr, rc, rr, _ = losses.LOSS_ARGS
    head = (f"chosen_drift = {pc} - {rc}\nrejected_drift = {pr} - {rr}\n"
            "rho = chosen_drift - rejected_drift\nx = beta * rho\n")
    call = f"{names.pop('helper')}({', '.join(losses.LOSS_ARGS)})" if "helper" in names else ""
    text = head + body.format(call=call, **names)
    src = f"def child({', '.join(losses.LOSS_ARGS)}):\n" + "".join(f"    {line}\n" for line in text.splitlines())
    tree.body.append(ast.parse(src).body[0])
    return tree


SIDE_MAPS = {"softplus": "F.softplus({u})", "relu": "torch.relu({u})", "exp": "torch.exp(torch.clamp({u}, max=30.0))"}


def op_sides(trees: list[ast.Module], rng: random.Random) -> tuple[ast.Module, str, str]:
    """Treat the chosen and rejected sides apart: weight their log-ratio drifts unequally inside the margin, or
    add a term on one side alone (keep the chosen response likely, or push the rejected one down)."""
    tree = trees[0]
    sites = _margin_sites(tree)
    pc, pr, rc, rr, _ = losses.LOSS_ARGS
    if sites and rng.random() < 0.5:
        site, chosen = rng.choice(sites), rng.random() < 0.5
        weight = _add_constant(tree, "CHOSEN_WEIGHT" if chosen else "REJECTED_WEIGHT",
                               _sig(rng.choice((rng.uniform(0.2, 0.6), rng.uniform(1.6, 3.0)))))
        template = "W * (P - R) - (Q - S)" if chosen else "P - R - W * (Q - S)"
        site.value = _expr(template, W=weight, P=_name(pc), R=_name(rc), Q=_name(pr), S=_name(rr))
        side = "chosen" if chosen else "rejected"
        return tree, f"{side}_weighted", f"weighted the {side} side's drift in '{site.targets[0].id}' apart"
    helper = _as_helper(tree, set())
    chosen, kind = rng.random() < 0.5, rng.choice(sorted(SIDE_MAPS))
    drift = "-beta * chosen_drift" if chosen else "beta * rejected_drift"
    lam = _add_constant(tree, "SIDE_WEIGHT", _lognormal(rng, 0.5, 0.7))
    term = SIDE_MAPS[kind].format(u=f"{drift} - {_add_constant(tree, 'SIDE_MARGIN', _sig(rng.uniform(-0.5, 0.5))).id}")
    _with_public(tree, "return {call} + {lam} * {term}", helper=helper, lam=lam.id, term=term)
    side = "chosen" if chosen else "rejected"
    return tree, f"{side}_{kind}", f"added a {kind} term on the {side} side's drift alone"


def op_reweight(trees: list[ast.Module], rng: random.Random) -> tuple[ast.Module, str, str]:
    """Reweight examples PFL-style: by how wrong the policy is (sigmoid of -beta*rho, detached or not) or by
    correctness (the sign of rho, or of the raw policy preference)."""
    tree = trees[0]
    helper = _as_helper(tree, set())
    pc, pr = losses.LOSS_ARGS[:2]
    if rng.random() < 0.5:
        detach = rng.random() < 0.5
        temp = _add_constant(tree, "FOCUS_TEMP", _lognormal(rng, 0.3, 0.5))  # |beta * rho| is often below 1
        amp = _add_constant(tree, "FOCUS", _lognormal(rng, 3.0, 0.5))
        weight = f"torch.sigmoid(-x / {temp.id})" + (".detach()" if detach else "")
        _with_public(tree, "weight = 1.0 + {amp} * {w}\nreturn weight * {call}", helper=helper, amp=amp.id,
                     w=weight)
        return tree, "focus", f"weighted pairs by how wrong the policy is ({'detached' if detach else 'attached'})"
    raw = rng.random() < 0.5
    right = f"{pc} > {pr}" if raw else "rho > 0"
    low = _add_constant(tree, "RIGHT_WEIGHT", _sig(rng.uniform(0.1, 0.7)))
    high = _add_constant(tree, "WRONG_WEIGHT", _lognormal(rng, 2.0, 0.4))
    _with_public(tree, "return torch.where({right}, {low}, {high}) * {call}", helper=helper, right=right,
                 low=low.id, high=high.id)
    return tree, "correct", f"weighted pairs by correctness ({'policy preference' if raw else 'sign of rho'})"


def op_piecewise(trees: list[ast.Module], rng: random.Random) -> tuple[ast.Module, str, str]:
    """One shape below a threshold on beta*rho, another above: two parents (or the parent and a base term)."""
    first = trees[0]
    helper_a = _as_helper(first, set())
    if len(trees) > 1:
        tree, helper_b = _merge_second(first, trees[1])
        other, b_kind = f"{helper_b}({', '.join(losses.LOSS_ARGS)})", "the second parent"
    else:
        tree, b_kind = first, rng.choice(sorted(BASE_TERMS))
        other = BASE_TERMS[b_kind].replace("X", "x")
    value = _sig(rng.uniform(-0.3, 0.5))  # where |beta * rho| lives early in training, so both shapes act
    threshold, parent_below = _add_constant(tree, "THRESHOLD", value), rng.random() < 0.5
    below, above = ("{call}", other) if parent_below else (other, "{call}")
    _with_public(tree, f"return torch.where(x > {{t}}, {above}, {below})", helper=helper_a, t=threshold.id)
    where = "above" if parent_below else "below"
    return tree, "piecewise", f"kept the parent's shape on one side of beta*rho = {value} and {b_kind} {where}"


def op_schedule(trees: list[ast.Module], rng: random.Random) -> tuple[ast.Module, str, str]:
    """A margin that depends on rho's magnitude: a target that grows with |rho|, or one that only acts near 0."""
    tree, sites = trees[0], _margin_sites(trees[0])
    if not sites:
        raise _Skip("no margin to schedule")
    site, grow = rng.choice(sites), rng.random() < 0.5
    m = _add_constant(tree, "TARGET", _lognormal(rng, 1.0, 0.5))
    s = _add_constant(tree, "REACH", _lognormal(rng, 2.0, 0.5))
    template = "E - M * torch.tanh(torch.abs(E) / S)" if grow else "E - M * torch.exp(-torch.abs(E) / S)"
    site.value = _expr(template, E=site.value, M=m, S=s)
    how = "grows with" if grow else "fades with"
    return tree, "schedule", f"gave '{site.targets[0].id}' a target margin that {how} |rho|"


OPERATORS = {"mutate": op_mutate, "mixture": op_mixture, "margin": op_margin, "crossover": op_crossover,
             "tune": op_tune, "sides": op_sides, "reweight": op_reweight, "piecewise": op_piecewise,
             "schedule": op_schedule}
# Relative odds when a child neither crosses two parents nor retunes constants: the operators that change the
# gradient's shape (benchmarks/evolution_near_copies.py) are drawn three times as often as map swaps and fixed margins,
# which often leave the shape unchanged where |beta * rho| is small.
SINGLE_OPERATORS = {"sides": 3, "reweight": 3, "piecewise": 3, "schedule": 3, "mixture": 3, "mutate": 1, "margin": 1}
TWO_PARENTS = ("crossover", "piecewise")


# --- clean-up applied to every child ---


def _clip_exps(tree: ast.Module) -> None:
    """Clamp the argument of every tensor exp (call or method) so large margins cannot overflow float32."""
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "exp"):
            continue
        head = _chain(node.func)[:1]
        if head == ["math"] or node.keywords or len(node.args) != (1 if head == ["torch"] else 0):
            continue
        arg = node.args[0] if head == ["torch"] else node.func.value
        if not (isinstance(arg, ast.Call) and _chain(arg.func)[-1:] == ["clamp"]):
            new = _expr(EXP, U=arg)
            node.func, node.args = new.func, new.args


def _prune(tree: ast.Module) -> None:
    """Drop dead local assignments, unused constants and helpers and imports; add imports now needed."""
    changed = True
    while changed:
        used, size = _loaded(tree), sum(len(f.body) for f in _functions(tree)) + len(tree.body)
        for fn in _functions(tree):
            fn.body = [s for s in fn.body if not (isinstance(s, ast.Assign) and len(s.targets) == 1 and
                                                  isinstance(s.targets[0], ast.Name) and not used[s.targets[0].id])]
        tree.body = [s for s in tree.body if not (isinstance(s, ast.Assign) and not any(used[t.id] for t in s.targets))
                     and not (isinstance(s, ast.FunctionDef) and s.name.startswith("_") and not used[s.name])]
        changed = size != sum(len(f.body) for f in _functions(tree)) + len(tree.body)
    used = _loaded(tree)
    bound = lambda s: [(a.asname or a.name).split(".")[0] for a in s.names]  # noqa: E731
    imports = [s for s in tree.body if isinstance(s, (ast.Import, ast.ImportFrom)) and any(used[b] for b in bound(s))]
    tree.body = [s for s in tree.body if not isinstance(s, (ast.Import, ast.ImportFrom))]
    have = {b for s in imports for b in bound(s)}
    wanted = {"math": "import math", "torch": "import torch", "F": "import torch.nn.functional as F"}
    tree.body[:0] = list({ast.dump(s): s for s in imports}.values()) + [
        ast.parse(line).body[0] for ident, line in wanted.items() if used[ident] and ident not in have]


def _finish(tree: ast.Module, name: str, doc: str) -> str:
    """Clip, prune, name the public function; lay out docstring, imports, constants, helpers, public."""
    _clip_exps(tree)
    _prune(tree)
    _public(tree).name = name
    rank = {ast.Import: 0, ast.ImportFrom: 0, ast.Assign: 1, ast.FunctionDef: 2}
    body = [s for s in tree.body if not isinstance(s, ast.Expr)]
    body.sort(key=lambda s: rank[type(s)] + (getattr(s, "name", "") == name))
    tree.body = [ast.Expr(value=ast.Constant(doc)), *body]
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def _root(name: str) -> str:
    """Lineage-free stem of a name, so child names stay short: 'dpo_tanh_mix_3' -> 'dpo'."""
    parts = [p for p in re.sub(r"[^a-z0-9_]", "", name.lower()).split("_") if p]
    cut = next((i for i, p in enumerate(parts) if p in TAGS or p.isdigit()), len(parts))
    stem = "_".join(parts[:min(cut, 3)]) or (parts[0] if parts else "loss")
    return stem if stem[0].isalpha() else f"loss_{stem}"


def reference_parents() -> list[_Parent]:
    """The reference losses shipped in discopop/proposals/, the parent pool of an empty run."""
    codes = {p.stem: p.read_text(encoding="utf-8") for p in sorted(PROPOSALS_DIR.glob("*.py"))}
    return [_Parent(None, name, code, None, _hash(code)) for name, code in codes.items()]


# Both are pure functions of the code; caching them keeps propose() fast as the history grows.
@functools.lru_cache(maxsize=16384)
def _hash(code: str) -> str:
    return losses.code_hash(code)


@functools.lru_cache(maxsize=16384)
def _valid(code: str) -> bool:
    try:
        losses.static_check(code)
    except losses.LossRejected:
        return False
    return True


# --- static behaviour filter: children that only rescale, shift or re-beta their parent are redrawn ---


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
    tree = ast.parse(code)
    numbers = {t.id: s.value for s in tree.body if isinstance(s, ast.Assign) and isinstance(s.value, ast.Constant)
               for t in s.targets if isinstance(t, ast.Name)}
    inline = lambda n: ast.Constant(numbers[n.id]) if isinstance(n, ast.Name) and n.id in numbers else None  # noqa: E731
    tree = _Sub(inline).visit(tree)
    tree.body = [s for s in tree.body if not isinstance(s, (ast.Expr, ast.Assign, ast.Import, ast.ImportFrom))]
    public = _public(tree)
    public.name = "loss"
    for fn in _functions(tree):
        site = _margin_site(fn)
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


HISTORY_MODES = ("feedback", "none")
POPULATIONS = ("cells", "flat")


class EvolutionProposer(Proposer):
    """Offline evolution over loss programs.

    Args:
        seed: seeds the one ``random.Random`` behind every choice: the same seed and history give the same
            proposals, and ``state()`` / ``load_state()`` carry the generator across a resume.
        tournament_size: a parent is the best of this many pool members drawn at random (1: uniform choice).
        crossover_rate: probability that a child crosses two parents.
        constant_rate: probability that a child only retunes constants; the remaining probability is split
            between the other operators by the odds in ``SINGLE_OPERATORS`` (piecewise takes a second parent).
        novelty_weight: diversity pressure. In a tournament a parent's fitness counts as
            ``fitness - novelty_weight * spread * log1p(children it already has)`` (spread: the pool's
            fitness range), so a lineage that has been tried often yields to a less-used one of similar fitness.
        max_attempts: tries per requested candidate before giving up on it (an operator may not apply to the
            chosen parent, or may write a child that is already in the history).
        population: ``cells`` (MAP-Elites): the parent pool is the best loss of each behaviour cell
            (``behaviour_map``), so distinct gradient shapes survive beside the fittest; ``flat``: every
            scored loss. Either way a loss's fitness here is its lower confidence bound (``seed_race``).
        history_mode: ``feedback`` (selection on the archive) or ``none``, the control arm: no feedback at all;
            each child is a random chain of 1..``chain_length`` operators on a uniformly drawn reference loss,
            so a run is best-of-N sampling of the operators, against which the loop's selection can be shown.
        chain_length: the longest operator chain of a ``none`` child (feedback children get one operator per
            generation, so their chains grow with the lineage instead).
        lookahead: 1 asks the loop to propose the next generation while this one trains (``Proposer.lookahead``);
            0 (default): proposing takes milliseconds here, so lock step costs nothing and sees one generation more.
    """

    name = "evolution"

    def __init__(self, seed: int, tournament_size: int = 3, crossover_rate: float = 0.1,
                 constant_rate: float = 0.05, novelty_weight: float = 0.1, max_attempts: int = 20,
                 population: str = "cells", history_mode: str = "feedback", chain_length: int = 3,
                 lookahead: int = 0):
        if tournament_size < 1 or max_attempts < 1 or chain_length < 1:
            raise ValueError(f"tournament_size, max_attempts and chain_length must be >= 1, got {tournament_size}, "
                             f"{max_attempts}, {chain_length}")
        if not (0 <= crossover_rate <= 1 and 0 <= constant_rate <= 1 and crossover_rate + constant_rate <= 1):
            raise ValueError(f"crossover_rate ({crossover_rate}) and constant_rate ({constant_rate}) must lie in "
                             "[0, 1] and sum to at most 1")
        if novelty_weight < 0:
            raise ValueError(f"novelty_weight must be >= 0, got {novelty_weight}")
        if population not in POPULATIONS or history_mode not in HISTORY_MODES:
            raise ValueError(f"population must be one of {', '.join(POPULATIONS)} and history_mode one of "
                             f"{', '.join(HISTORY_MODES)}, got {population!r}, {history_mode!r}")
        if lookahead not in (0, 1) or isinstance(lookahead, bool):
            raise ValueError(f"lookahead must be 0 or 1, got {lookahead!r}")
        self.lookahead = lookahead
        self.tournament_size, self.crossover_rate, self.constant_rate = tournament_size, crossover_rate, constant_rate
        self.novelty_weight, self.max_attempts = novelty_weight, max_attempts
        self.population, self.history_mode, self.chain_length = population, history_mode, chain_length
        self._rng = random.Random(seed)

    def state(self) -> dict:
        """The RNG state as JSON-able data."""
        version, internal, gauss = self._rng.getstate()
        return {"rng": [version, list(internal), gauss]}

    def load_state(self, state: dict) -> None:
        version, internal, gauss = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss))

    def propose(self, history: list[HistoryEntry], k: int, generation: int) -> list[Candidate]:
        history = sorted(history, key=lambda e: e.id)  # the archive's order must not change the proposals
        blind = self.history_mode == "none"
        pool = self._reference_pool(history) if blind else self._pool(history)
        # Seen code and names only keep proposals new; a blind child never reads a fitness or an outcome.
        seen, names = {_hash(e.code) for e in history}, {e.name for e in history}
        uses = Counter(pid for e in history for pid in e.parent_ids)
        out: list[Candidate] = []
        for _ in range(k):
            for _attempt in range(self.max_attempts):
                cand = self._blind_child(pool, names) if blind else self._child(pool, uses, names)
                if cand is not None and _hash(cand.code) not in seen:
                    seen.add(_hash(cand.code))
                    names.add(cand.name)
                    uses.update(cand.parent_ids or cand.info["parents"])
                    out.append(cand)
                    break
        return out

    def _pool(self, history: list[HistoryEntry]) -> list[_Parent]:
        """Scored entries (the elite of each behaviour cell with ``population=cells``); else any entry whose
        code passes the static check; else the reference losses. Fitness is the lower confidence bound."""
        scored = [e for e in history if e.status == Status.SCORED and e.fitness is not None and _valid(e.code)]
        if scored and self.population == "cells":
            scored = behaviour_map.elites(scored)
        entries = scored or [e for e in history if _valid(e.code)]
        return [_Parent(e.id, e.name, e.code, e.selection_fitness, _hash(e.code)) for e in entries] or \
            reference_parents()

    @staticmethod
    def _reference_pool(history: list[HistoryEntry]) -> list[_Parent]:
        """The references, without their fitness: the archived rows (for lineage), else the shipped files."""
        refs = [e for e in history if e.proposer == "reference" and _valid(e.code)]
        return [_Parent(e.id, e.name, e.code, None, _hash(e.code)) for e in refs] or reference_parents()

    def _select(self, pool: list[_Parent], uses: Counter) -> _Parent:
        fits = [p.fitness for p in pool if p.fitness is not None]
        spread = max(fits) - min(fits) if len(fits) > 1 and max(fits) > min(fits) else 1.0

        def score(p: _Parent) -> float:
            uses_p = uses[p.id if p.id is not None else p.name]
            return (p.fitness or 0.0) - self.novelty_weight * spread * math.log1p(uses_p)

        return max(self._rng.sample(pool, min(self.tournament_size, len(pool))), key=score)

    def _operator(self, pool: list[_Parent]) -> str:
        r = self._rng.random()
        if r < self.crossover_rate and len({p.hash for p in pool}) > 1:
            return "crossover"
        if r < self.crossover_rate + self.constant_rate:
            return "tune"
        return self._rng.choices(list(SINGLE_OPERATORS), weights=list(SINGLE_OPERATORS.values()))[0]

    def _child(self, pool: list[_Parent], uses: Counter, names: set[str]) -> Candidate | None:
        op = self._operator(pool)
        parents = [self._select(pool, uses)]
        if op in TWO_PARENTS and len({p.hash for p in pool}) > 1:
            parents.append(self._select([p for p in pool if p.hash != parents[0].hash], uses))
        return self._write(parents[0], [(op, parents[1:])], names)

    def _blind_child(self, pool: list[_Parent], names: set[str]) -> Candidate | None:
        """A chain of random operators on a uniformly drawn reference; second parents are references too."""
        steps = []
        for _ in range(self._rng.randint(1, self.chain_length)):
            op = self._operator(pool)
            steps.append((op, [self._rng.choice(pool)] if op in TWO_PARENTS and len({p.hash for p in pool}) > 1
                          else []))
        return self._write(self._rng.choice(pool), steps, names)

    def _write(self, first: _Parent, steps: list[tuple[str, list[_Parent]]], names: set[str]) -> Candidate | None:
        """Apply each step's operator to the code so far (``first``'s code to begin with) and the step's further
        parents; None if an operator does not apply or the child is not worth training."""
        parents = [first, *(p for _, extra in steps for p in extra)]
        code, tags, whats = first.code, [], []
        for i, (op, extra) in enumerate(steps):
            try:
                tree, tag, what = OPERATORS[op]([ast.parse(c) for c in [code, *(p.code for p in extra)]], self._rng)
            except (_Skip, SyntaxError, StopIteration):
                return None
            tags.append(f"x_{_root(extra[0].name).split('_')[0]}" if op == "crossover" and extra else tag)
            whats.append(what)
            if i < len(steps) - 1:  # the next operator reads the code so far
                code = _finish(tree, "child", "")
        ops = [op for op, _ in steps]
        name = next(n for i in range(1, len(names) + 2) if (n := f"{_root(first.name)}_{tags[-1]}_{i}") not in names)
        refs = " and ".join(dict.fromkeys(f"'{p.name}'" + (f" (#{p.id})" if p.id is not None else "")
                                          for p in parents))
        thought = f"Applied {' then '.join(ops)} to {refs}: {'; then '.join(whats)}."
        code = _finish(tree, name, f"{name}: evolved offline.\n\n{thought}".replace("__", "_").replace("{", "("))
        if len(code) > MAX_CODE_CHARS or not _valid(code):
            return None
        if any(same_behaviour(p.code, code) for p in parents):
            return None  # a rescaled, shifted or beta-rescaled parent trains exactly like it: redraw
        parent_ids = list(dict.fromkeys(p.id for p in parents if p.id is not None))
        info = {"operator": "+".join(ops), "detail": tags[-1], "parents": [p.name for p in parents]}
        return Candidate(name=name, code=code, thought=thought, parent_ids=parent_ids, proposer=self.name, info=info)
