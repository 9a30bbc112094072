"""The ``history_mode: none`` control arm: children without any feedback from the run.

Each child is a chain of 1..``chain_length`` random operators on a uniformly drawn reference loss (second
parents are references too), so a run is best-of-N sampling of the same operators; comparing it with the
feedback arm (``benchmarks/search_efficiency.py``) shows what selection on the archive adds. Nothing here
reads a fitness or an outcome.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from discopop.proposers.base import HistoryEntry
from discopop.proposers.evolution.children import Step
from discopop.proposers.evolution.operators import TWO_PARENTS, draw_operator
from discopop.proposers.evolution.program import code_hash, passes_static_check
from discopop.proposers.evolution.selection import Parent, can_cross, reference_parents


def reference_pool(history: list[HistoryEntry]) -> list[Parent]:
    """The references, without their fitness: the archived rows (for lineage), else the shipped files."""
    refs = [e for e in history if e.proposer == "reference" and passes_static_check(e.code)]
    return [Parent(e.id, e.name, e.code, None, code_hash(e.code)) for e in refs] or reference_parents()


def chain_steps(rng: random.Random, chain_length: int, crossover_rate: float, constant_rate: float, v2: bool,
                second: Callable[[], Parent] | None) -> list[Step]:
    """1..``chain_length`` random operator steps; a two-parent step takes ``second()`` (None: the pool has no
    second code, so no crossover is drawn). Both arms draw a chain here, so their children differ only in parents."""
    steps: list[Step] = []
    for _ in range(rng.randint(1, chain_length)):
        op = draw_operator(rng, crossover_rate, constant_rate, second is not None, v2)
        steps.append((op, [second()] if op in TWO_PARENTS and second is not None else []))
    return steps


def random_chain(pool: list[Parent], rng: random.Random, chain_length: int, crossover_rate: float,
                 constant_rate: float, v2: bool = False) -> tuple[Parent, list[Step]]:
    """A uniformly drawn first parent and a chain of random operator steps for it (``v2``: the contract-v2
    operators may be drawn too; a chain with one before its last step is not written)."""
    second = (lambda: rng.choice(pool)) if can_cross(pool) else None
    steps = chain_steps(rng, chain_length, crossover_rate, constant_rate, v2, second)
    return rng.choice(pool), steps
