"""The ``history_mode: none`` control arm: children without any feedback from the run.

Each child is a chain of 1..``chain_length`` random operators on a uniformly drawn reference loss (second
parents are references too), so a run is best-of-N sampling of the same operators; comparing it with the
feedback arm (``benchmarks/search_efficiency.py``) shows what selection on the archive adds. Nothing here
reads a fitness or an outcome.
"""

from __future__ import annotations

import random

from discopop.proposers.base import HistoryEntry
from discopop.proposers.evolution.children import Step
from discopop.proposers.evolution.operators import TWO_PARENTS, draw_operator
from discopop.proposers.evolution.program import code_hash, passes_static_check
from discopop.proposers.evolution.selection import Parent, can_cross, reference_parents


def reference_pool(history: list[HistoryEntry]) -> list[Parent]:
    """The references, without their fitness: the archived rows (for lineage), else the shipped files."""
    refs = [e for e in history if e.proposer == "reference" and passes_static_check(e.code)]
    return [Parent(e.id, e.name, e.code, None, code_hash(e.code)) for e in refs] or reference_parents()


def random_chain(pool: list[Parent], rng: random.Random, chain_length: int, crossover_rate: float,
                 constant_rate: float, v2: bool = False) -> tuple[Parent, list[Step]]:
    """A uniformly drawn first parent and a chain of random operator steps for it (``v2``: the contract-v2
    operators may be drawn too; a chain with one before its last step is not written)."""
    steps: list[Step] = []
    for _ in range(rng.randint(1, chain_length)):
        op = draw_operator(rng, crossover_rate, constant_rate, can_cross(pool), v2)
        steps.append((op, [rng.choice(pool)] if op in TWO_PARENTS and can_cross(pool) else []))
    return rng.choice(pool), steps
