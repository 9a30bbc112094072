"""Writing a child: apply a chain of operator steps to a parent, name and document it, and keep it only if it
is worth training (within size, static-checked, not a rescaled copy of a parent).

Both arms (feedback and the ``none`` control) end here, so a child reads the same whichever arm drew it. Child
code is only static-checked, never executed.
"""

from __future__ import annotations

import random

from discopop.contract import losses
from discopop.contract.inputs import is_v1
from discopop.contract.syntax import parse
from discopop.proposers.base import Candidate
from discopop.proposers.evolution.behaviour_filter import same_behaviour
from discopop.proposers.evolution.cleanup import finish
from discopop.proposers.evolution.operators import OPERATORS, V2_OPERATORS, Skip, root_name
from discopop.proposers.evolution.program import passes_static_check
from discopop.proposers.evolution.selection import Parent

# Crossover children hold both parents whole; this stops nested crossovers growing without bound.
MAX_CODE_CHARS = 8000
# One operator step: its name and the further parents it takes (crossover, piecewise: one; others: none).
Step = tuple[str, list[Parent]]


def passes_v2_check(code: str) -> bool:
    """Whether a v2 operator's child passes the static check with a contract-v2 signature."""
    try:
        return not is_v1(losses.static_check(code).inputs)
    except losses.LossRejected:
        return False


def write_child(first: Parent, steps: list[Step], names: set[str], rng: random.Random,
                proposer: str) -> Candidate | None:
    """Apply each step's operator to the code so far (``first``'s code to begin with) and the step's further
    parents; None if an operator does not apply or the child is not worth training. ``names`` are taken."""
    parents = [first, *(p for _, extra in steps for p in extra)]
    code, tags, whats = first.code, [], []
    for i, (op, extra) in enumerate(steps):
        if op in V2_OPERATORS and i < len(steps) - 1:
            return None  # the other operators splice the four inputs: a v2 step can only end a chain
        try:
            operator = OPERATORS.get(op) or V2_OPERATORS[op]
            tree, tag, what = operator([parse(c) for c in [code, *(p.code for p in extra)]], rng)
        except (Skip, SyntaxError, StopIteration):
            return None
        tags.append(f"x_{root_name(extra[0].name).split('_')[0]}" if op == "crossover" and extra else tag)
        whats.append(what)
        if i < len(steps) - 1:  # the next operator reads the code so far
            code = finish(tree, "child", "")
    ops = [op for op, _ in steps]
    name = next(n for i in range(1, len(names) + 2) if (n := f"{root_name(first.name)}_{tags[-1]}_{i}") not in names)
    refs = " and ".join(dict.fromkeys(f"'{p.name}'" + (f" (#{p.id})" if p.id is not None else "")
                                      for p in parents))
    thought = f"Applied {' then '.join(ops)} to {refs}: {'; then '.join(whats)}."
    code = finish(tree, name, f"{name}: evolved offline.\n\n{thought}".replace("__", "_").replace("{", "("))
    if len(code) > MAX_CODE_CHARS or not (passes_v2_check(code) if ops[-1] in V2_OPERATORS
                                          else passes_static_check(code)):
        return None
    if any(same_behaviour(p.code, code) for p in parents):
        return None  # a rescaled, shifted or beta-rescaled parent trains exactly like it: redraw
    parent_ids = list(dict.fromkeys(p.id for p in parents if p.id is not None))
    info = {"operator": "+".join(ops), "detail": tags[-1], "parents": [p.name for p in parents]}
    return Candidate(name=name, code=code, thought=thought, parent_ids=parent_ids, proposer=proposer, info=info)
