"""The program operators: each turns parsed parent losses into a child loss, most of them changing its shape.

Adam ignores a positive scale of the loss, so most operators change the *shape* of the gradient instead:
separate terms or weights for the chosen and rejected sides (``sides``), PFL-style reweighting of examples by
correctness or by how wrong the policy is (``reweight``), one shape below a threshold on beta*rho and another
above (``piecewise``), a target margin that depends on |rho| (``schedule``), a sigmoid-gated base term
(``mixture``); fewer swap a monotone map (``mutate``), shift the margin by a constant (``margin``), cross two
parents (``crossover``) or retune constants (``tune``). Where the run allows contract-v2 inputs
(``proposer.v2_operators``), three more rewrite a four-input parent into a v2 loss: ``length_norm``, ``nll_mix`` and
``reference_free``. Each is built to keep a loss finite on large inputs, so
most children pass the numeric checks. An operator takes the parsed parents and the RNG and returns
(child tree, name tag, what it did), or raises ``Skip`` where it does not apply.
"""

from __future__ import annotations

import ast
import math
import random
import re

from discopop.contract import losses
from discopop.contract.allowlist_check import dotted_parts
from discopop.contract.syntax import parse
from discopop.proposers.evolution.program import (
    EXP,
    Substitute,
    add_constant,
    all_names,
    assign,
    expr,
    fresh_name,
    functions,
    margin_site,
    margin_sites,
    name_node,
    public_function,
    rename,
    significant,
)

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
# Words operators add to child names; root_name strips them so names do not grow with the lineage.
TAGS = {*INCREASING, *UNIT, *WRAPS, *BASE_TERMS, "sigmoid", "mix", "margin", "scale", "x", "tune",
        "chosen", "rejected", "weighted", "focus", "correct", "piecewise", "schedule", "lennorm", "nll", "simpo",
        "reffree"}


class Skip(Exception):
    """The operator does not apply to this parent; the proposer tries again."""


def _kind(node: ast.AST) -> str | None:
    """'tanh' for a one-argument call torch.tanh(u) (or F.*) of a map the mutate operator knows."""
    if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords and len(dotted_parts(node.func)) == 2:
        head, kind = dotted_parts(node.func)
        return kind if head in ("torch", "F") and kind in (*INCREASING, "sigmoid") else None
    return None


def lognormal(rng: random.Random, centre: float, sigma: float) -> float:
    return significant(centre * math.exp(rng.gauss(0.0, sigma)))


def _scaled_margin(fn: ast.FunctionDef) -> ast.expr:
    """The parent's beta-scaled margin if it names one, else beta * rho (written out if need be)."""
    site = margin_site(fn)
    if site is None:
        return expr("beta * (P - Q - (R - S))", **dict(zip("PQRS", map(name_node, losses.LOSS_ARGS[:4]), strict=True)))
    rho = name_node(site.targets[0].id)
    scaled = {ast.dump(expr("beta * R", R=rho)), ast.dump(expr("R * beta", R=rho))}
    named = (s.targets[0].id for s in fn.body if isinstance(s, ast.Assign) and isinstance(s.targets[0], ast.Name)
             and ast.dump(s.value) in scaled)
    ident = next(named, None)
    return name_node(ident) if ident else expr("beta * R", R=rho)


# --- operators: each takes parsed parents and the RNG and returns (child tree, name tag, what it did) ---


def op_mutate(trees: list[ast.Module], rng: random.Random) -> tuple[ast.Module, str, str]:
    """Swap a monotone map for another of the same kind, or reshape a margin with an increasing wrap."""
    tree, sites = trees[0], margin_sites(trees[0])
    calls = [n for n in ast.walk(tree) if _kind(n)]
    if calls and (not sites or rng.random() < 0.6):
        call = rng.choice(calls)
        old, arg = _kind(call), call.args[0]
        table = UNIT if old == "sigmoid" else INCREASING
        new = rng.choice(sorted(k for k in table if k != old))
        if old == "exp" and isinstance(arg, ast.Call) and dotted_parts(arg.func)[-1:] == ["clamp"] and arg.args:
            arg = arg.args[0]  # drop the overflow guard; EXP re-adds it where exp survives
        tree = Substitute(lambda n: expr(table[new], U=arg) if n is call else None).visit(tree)
        return tree, new, f"swapped {'.'.join(dotted_parts(call.func))} for {new}"
    if not sites:
        raise Skip("no margin to wrap")
    site, kind = rng.choice(sites), rng.choice(sorted(WRAPS))
    template, centre = WRAPS[kind]
    site.value = expr(template, E=site.value, C=add_constant(tree, kind.upper(), lognormal(rng, centre, 0.5)))
    return tree, kind, f"wrapped the margin '{site.targets[0].id}' in a {kind}"


def op_mixture(trees: list[ast.Module], rng: random.Random) -> tuple[ast.Module, str, str]:
    """loss = (1 - w) * A + w * B, w = sigmoid(x / tau): A is the parent's loss or a base term, B a base term."""
    tree = trees[0]
    fn = public_function(tree)
    returns = [n for n in ast.walk(fn) if isinstance(n, ast.Return)]
    if len(returns) != 1 or fn.body[-1] is not returns[0] or returns[0].value is None:
        raise Skip("needs a single final return")
    taken, scaled = all_names(tree), _scaled_margin(fn)
    x = scaled if isinstance(scaled, ast.Name) else name_node(fresh_name("mix_margin", taken))
    gate = fresh_name("mix_gate", taken)
    b_kind = rng.choice(sorted(BASE_TERMS))
    a_kind = "the parent's loss" if rng.random() < 0.5 else rng.choice(sorted(set(BASE_TERMS) - {b_kind}))
    tau = add_constant(tree, "TAU", significant(math.exp(rng.uniform(math.log(0.1), math.log(2.0)))))
    body = [assign(gate, expr("torch.sigmoid(X / T)", X=x, T=tau))]
    body[:0] = [] if scaled is x else [assign(x.id, scaled)]
    if a_kind in BASE_TERMS:
        a = expr(BASE_TERMS[a_kind], X=x)
    else:
        a = name_node(fresh_name("base_loss", taken))
        body.insert(0, assign(a.id, returns[0].value))
    mix = expr("(1.0 - W) * A + W * B", W=name_node(gate), A=a, B=expr(BASE_TERMS[b_kind], X=x))
    fn.body[-1:] = [*body, ast.Return(value=mix)]
    return tree, f"{b_kind}_mix", f"gated {a_kind} into a {b_kind} term by a sigmoid of the scaled margin"


def op_margin(trees: list[ast.Module], rng: random.Random) -> tuple[ast.Module, str, str]:
    """Demand a margin: rho - m, m > 0 (rescaling rho is only a change of beta, so this operator never does it)."""
    tree, sites = trees[0], margin_sites(trees[0])
    if not sites:
        raise Skip("no margin to shift")
    site = rng.choice(sites)
    site.value = expr("E - M", E=site.value, M=add_constant(tree, "MARGIN", lognormal(rng, 2.0, 0.5)))
    return tree, "margin", f"shifted '{site.targets[0].id}'"


def _helper_name(tree: ast.Module, taken: set[str]) -> str:
    """A fresh private name for ``tree``'s loss once it becomes a helper of a new loss: '_dpo_part'."""
    return fresh_name(f"_{root_name(public_function(tree).name)}_part", taken)


def _merge_second(first: ast.Module, second: ast.Module) -> tuple[ast.Module, str]:
    """One module holding ``first`` and ``second`` (docstrings dropped), and the name ``second``'s loss now has.

    ``second``'s loss becomes a private helper and its top-level names that clash with ``first``'s are
    renamed; fresh names are drawn from one set, so no two coincide.
    """
    first_names = all_names(first)
    taken = first_names | all_names(second)
    top = {t.id for s in second.body if isinstance(s, ast.Assign) for t in s.targets if isinstance(t, ast.Name)}
    top |= {f.name for f in functions(second) if f.name.startswith("_")}
    mapping = {n: fresh_name(n, taken) for n in sorted(top) if n in first_names}
    helper = mapping[public_function(second).name] = _helper_name(second, taken)
    rename(second, mapping)
    body = [s for s in first.body + second.body if not isinstance(s, ast.Expr)]
    return ast.Module(body=body, type_ignores=[]), helper


def op_crossover(trees: list[ast.Module], rng: random.Random) -> tuple[ast.Module, str, str]:
    """a * L1 + (1 - a) * L2, each parent kept whole as a private helper; names of L2 that clash are renamed."""
    first, second = trees
    part_a = _as_helper(first, set())
    tree, part_b = _merge_second(first, second)
    weight = add_constant(tree, "MIX", significant(rng.uniform(0.2, 0.8)))
    fn = parse(f"def child({', '.join(losses.LOSS_ARGS)}):\n    pass\n").body[0]
    args = list(map(name_node, losses.LOSS_ARGS))
    calls = [ast.Call(func=name_node(part), args=args, keywords=[]) for part in (part_a, part_b)]
    fn.body = [ast.Return(value=expr("W * P + (1.0 - W) * Q", W=weight, P=calls[0], Q=calls[1]))]
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
        raise Skip("no constants to tune")
    for node in rng.sample(sites, min(len(sites), rng.choice((1, 2)))):
        v, step = float(node.value), rng.gauss(0.0, 0.3)
        node.value = significant(1 / (1 + math.exp(-math.log(v / (1 - v)) - step)) if 0 < v < 1 else v * math.exp(step))
    return tree, "tune", "retuned its constants"


# --- shape-changing operators: each writes a new public function around the parent kept whole as a helper ---


def _as_helper(tree: ast.Module, taken: set[str]) -> str:
    """Rename the parent's public function to a private helper (so a new public function can call it)."""
    helper = _helper_name(tree, taken | all_names(tree))
    rename(tree, {public_function(tree).name: helper})
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
    tree.body.append(parse(src).body[0])
    return tree


SIDE_MAPS = {"softplus": "F.softplus({u})", "relu": "torch.relu({u})", "exp": "torch.exp(torch.clamp({u}, max=30.0))"}


def op_sides(trees: list[ast.Module], rng: random.Random) -> tuple[ast.Module, str, str]:
    """Treat the chosen and rejected sides apart: weight their log-ratio drifts unequally inside the margin, or
    add a term on one side alone (keep the chosen response likely, or push the rejected one down)."""
    tree = trees[0]
    sites = margin_sites(tree)
    pc, pr, rc, rr, _ = losses.LOSS_ARGS
    if sites and rng.random() < 0.5:
        site, chosen = rng.choice(sites), rng.random() < 0.5
        weight = add_constant(tree, "CHOSEN_WEIGHT" if chosen else "REJECTED_WEIGHT",
                               significant(rng.choice((rng.uniform(0.2, 0.6), rng.uniform(1.6, 3.0)))))
        template = "W * (P - R) - (Q - S)" if chosen else "P - R - W * (Q - S)"
        site.value = expr(template, W=weight, P=name_node(pc), R=name_node(rc), Q=name_node(pr), S=name_node(rr))
        side = "chosen" if chosen else "rejected"
        return tree, f"{side}_weighted", f"weighted the {side} side's drift in '{site.targets[0].id}' apart"
    helper = _as_helper(tree, set())
    chosen, kind = rng.random() < 0.5, rng.choice(sorted(SIDE_MAPS))
    drift = "-beta * chosen_drift" if chosen else "beta * rejected_drift"
    lam = add_constant(tree, "SIDE_WEIGHT", lognormal(rng, 0.5, 0.7))
    shift = add_constant(tree, "SIDE_MARGIN", significant(rng.uniform(-0.5, 0.5)))
    term = SIDE_MAPS[kind].format(u=f"{drift} - {shift.id}")
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
        temp = add_constant(tree, "FOCUS_TEMP", lognormal(rng, 0.3, 0.5))  # |beta * rho| is often below 1
        amp = add_constant(tree, "FOCUS", lognormal(rng, 3.0, 0.5))
        weight = f"torch.sigmoid(-x / {temp.id})" + (".detach()" if detach else "")
        _with_public(tree, "weight = 1.0 + {amp} * {w}\nreturn weight * {call}", helper=helper, amp=amp.id,
                     w=weight)
        return tree, "focus", f"weighted pairs by how wrong the policy is ({'detached' if detach else 'attached'})"
    raw = rng.random() < 0.5
    right = f"{pc} > {pr}" if raw else "rho > 0"
    low = add_constant(tree, "RIGHT_WEIGHT", significant(rng.uniform(0.1, 0.7)))
    high = add_constant(tree, "WRONG_WEIGHT", lognormal(rng, 2.0, 0.4))
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
    value = significant(rng.uniform(-0.3, 0.5))  # where |beta * rho| lives early in training, so both shapes act
    threshold, parent_below = add_constant(tree, "THRESHOLD", value), rng.random() < 0.5
    below, above = ("{call}", other) if parent_below else (other, "{call}")
    _with_public(tree, f"return torch.where(x > {{t}}, {above}, {below})", helper=helper_a, t=threshold.id)
    where = "above" if parent_below else "below"
    return tree, "piecewise", f"kept the parent's shape on one side of beta*rho = {value} and {b_kind} {where}"


def op_schedule(trees: list[ast.Module], rng: random.Random) -> tuple[ast.Module, str, str]:
    """A margin that depends on rho's magnitude: a target that grows with |rho|, or one that only acts near 0."""
    tree, sites = trees[0], margin_sites(trees[0])
    if not sites:
        raise Skip("no margin to schedule")
    site, grow = rng.choice(sites), rng.random() < 0.5
    m = add_constant(tree, "TARGET", lognormal(rng, 1.0, 0.5))
    s = add_constant(tree, "REACH", lognormal(rng, 2.0, 0.5))
    template = "E - M * torch.tanh(torch.abs(E) / S)" if grow else "E - M * torch.exp(-torch.abs(E) / S)"
    site.value = expr(template, E=site.value, M=m, S=s)
    how = "grows with" if grow else "fades with"
    return tree, "schedule", f"gave '{site.targets[0].id}' a target margin that {how} |rho|"


# --- contract-v2 operators (proposer.v2_operators): each rewrites a four-input parent into a contract-v2 child ---
#
# The parent is kept whole as a private helper and called with rewritten inputs (or has a term added), so any
# four-input loss is a valid parent and the child's public signature is a v2 one the static check accepts. Their
# children are not parents in turn (``program.passes_static_check`` keeps the four-input parents the other
# operators splice), so each v2 child is one step from a four-input loss. On one-token answers (task=diagnostic)
# the lengths are 1: a length-normalised child trains as its parent there.


def _v2_child(tree: ast.Module, inputs: tuple[str, ...], args: tuple[str, str, str, str], body: str,
              **names: str) -> ast.Module:
    """Append ``def child(<inputs>, beta)`` returning ``body``, where ``{call}`` is the parent (now a helper)
    called with ``args`` in place of its four log-probs."""
    helper = _as_helper(tree, set())
    call = f"{helper}({', '.join(args)}, beta)"
    src = f"def child({', '.join((*inputs, 'beta'))}):\n    return {body.format(call=call, **names)}\n"
    tree.body.append(parse(src).body[0])
    return tree


def op_length_norm(trees: list[ast.Module], rng: random.Random) -> tuple[ast.Module, str, str]:
    """Length normalisation (TRL's sigmoid_norm for a DPO parent): each side's log-probs, and so its log-ratio,
    divided by its token count before the parent sees them."""
    pc, pr, rc, rr, _ = losses.LOSS_ARGS
    args = (f"{pc} / chosen_lengths", f"{pr} / rejected_lengths", f"{rc} / chosen_lengths",
            f"{rr} / rejected_lengths")
    tree = _v2_child(trees[0], (pc, pr, rc, rr, "chosen_lengths", "rejected_lengths"), args, "{call}")
    return tree, "lennorm", "divided each side's log-probs (so its log-ratio) by its token count"


def op_nll_mix(trees: list[ast.Module], rng: random.Random) -> tuple[ast.Module, str, str]:
    """SFT/NLL mixing (RPO-style): the parent plus w times the chosen answer's mean token NLL, w log-normal."""
    tree, value = trees[0], lognormal(rng, 0.5, 0.7)
    weight = add_constant(tree, "NLL_WEIGHT", value)
    tree = _v2_child(tree, (*losses.LOSS_ARGS[:4], "chosen_nll"), losses.LOSS_ARGS[:4],
                     "{call} + {w} * chosen_nll", w=weight.id)
    return tree, "nll", f"added {value} times the chosen answer's mean token NLL"


def op_reference_free(trees: list[ast.Module], rng: random.Random) -> tuple[ast.Module, str, str]:
    """Drop the reference terms (the parent sees reference log-probs of 0, so its log-ratios are the policy's own):
    no reference model is run; half the time also length-normalised (SimPO-like, without its margin)."""
    pc, pr = losses.LOSS_ARGS[:2]
    zeros = (f"torch.zeros_like({pc})", f"torch.zeros_like({pr})")
    if rng.random() < 0.5:
        inputs, args = (pc, pr, "chosen_lengths", "rejected_lengths"), (f"{pc} / chosen_lengths",
                                                                         f"{pr} / rejected_lengths", *zeros)
        tag, what = "simpo", "dropped the reference terms and length-normalised the policy log-probs (SimPO-like)"
    else:
        inputs, args, tag, what = (pc, pr), (pc, pr, *zeros), "reffree", "dropped the reference terms"
    return _v2_child(trees[0], inputs, args, "{call}"), tag, what


OPERATORS = {"mutate": op_mutate, "mixture": op_mixture, "margin": op_margin, "crossover": op_crossover,
             "tune": op_tune, "sides": op_sides, "reweight": op_reweight, "piecewise": op_piecewise,
             "schedule": op_schedule}
# Drawn only where the run allows contract-v2 inputs (proposer.v2_operators; ``draw_operator``).
V2_OPERATORS = {"length_norm": op_length_norm, "nll_mix": op_nll_mix, "reference_free": op_reference_free}
# Relative odds when a child neither crosses two parents nor retunes constants: the operators that change the
# gradient's shape (benchmarks/evolution_near_copies.py) are drawn three times as often as map swaps and fixed margins,
# which often leave the shape unchanged where |beta * rho| is small.
SINGLE_OPERATORS = {"sides": 3, "reweight": 3, "piecewise": 3, "schedule": 3, "mixture": 3, "mutate": 1, "margin": 1}
TWO_PARENTS = ("crossover", "piecewise")
# The contract-v2 operators' odds, drawn only where the run allows v2 inputs (proposer.v2_operators): then, when a
# child is one of SINGLE_OPERATORS', these odds join theirs. Off (the default), the draw is exactly as before.
V2_ODDS = {"length_norm": 2, "nll_mix": 2, "reference_free": 2}


def root_name(name: str) -> str:
    """Lineage-free stem of a name, so child names stay short: 'dpo_tanh_mix_3' -> 'dpo'."""
    parts = [p for p in re.sub(r"[^a-z0-9_]", "", name.lower()).split("_") if p]
    cut = next((i for i, p in enumerate(parts) if p in TAGS or p.isdigit()), len(parts))
    stem = "_".join(parts[:min(cut, 3)]) or (parts[0] if parts else "loss")
    return stem if stem[0].isalpha() else f"loss_{stem}"



def draw_operator(rng: random.Random, crossover_rate: float, constant_rate: float, can_cross: bool,
                  v2: bool = False) -> str:
    """The operator of the next step: crossover (only where ``can_cross``: the pool has two distinct codes),
    tune, or one of ``SINGLE_OPERATORS`` (with ``v2``: and ``V2_ODDS``) by its odds."""
    r = rng.random()
    if r < crossover_rate and can_cross:
        return "crossover"
    if r < crossover_rate + constant_rate:
        return "tune"
    odds = {**SINGLE_OPERATORS, **V2_ODDS} if v2 else SINGLE_OPERATORS
    return rng.choices(list(odds), weights=list(odds.values()))[0]
