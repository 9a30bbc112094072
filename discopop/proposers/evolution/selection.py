"""Parent selection for the feedback arm: which archived losses may be parents, and which one breeds next.

The pool is the scored history (with ``population=cells`` only the elite of each behaviour cell, MAP-Elites
style, so distinct gradient shapes survive beside the fittest); a parent is the winner of a small tournament on
its lower confidence bound, penalised for the children it already has so over-used lineages yield.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass

from discopop.proposers.base import HistoryEntry
from discopop.proposers.evolution.program import code_hash, passes_static_check
from discopop.proposers.reference import PROPOSALS_DIR
from discopop.search import behaviour_map
from discopop.status import Status


@dataclass(frozen=True)
class Parent:
    """A loss that may be a parent: archive id (None for a shipped reference file), fitness it is selected by."""

    id: int | None
    name: str
    code: str
    fitness: float | None
    hash: str


def reference_parents() -> list[Parent]:
    """The reference losses shipped in discopop/proposals/, the parent pool of an empty run."""
    codes = {p.stem: p.read_text(encoding="utf-8") for p in sorted(PROPOSALS_DIR.glob("*.py"))}
    return [Parent(None, name, code, None, code_hash(code)) for name, code in codes.items()]


def can_cross(pool: list[Parent]) -> bool:
    """Whether the pool holds two distinct codes, so a two-parent operator has a second parent to take."""
    return len({p.hash for p in pool}) > 1


def parent_pool(history: list[HistoryEntry], population: str) -> list[Parent]:
    """Scored entries (the elite of each behaviour cell with ``population=cells``); else any entry whose
    code passes the static check; else the reference losses. Fitness is the lower confidence bound."""
    scored = [e for e in history if e.status == Status.SCORED and e.fitness is not None and passes_static_check(e.code)]
    if scored and population == "cells":
        scored = behaviour_map.elites(scored)
    entries = scored or [e for e in history if passes_static_check(e.code)]
    return [Parent(e.id, e.name, e.code, e.selection_fitness, code_hash(e.code)) for e in entries] or \
        reference_parents()


def tournament(pool: list[Parent], uses: Counter, rng: random.Random, size: int, novelty_weight: float) -> Parent:
    """The best of ``size`` pool members drawn at random, by fitness minus a novelty penalty on their uses."""
    fits = [p.fitness for p in pool if p.fitness is not None]
    spread = max(fits) - min(fits) if len(fits) > 1 and max(fits) > min(fits) else 1.0

    def score(p: Parent) -> float:
        uses_p = uses[p.id if p.id is not None else p.name]
        return (p.fitness or 0.0) - novelty_weight * spread * math.log1p(uses_p)

    return max(rng.sample(pool, min(size, len(pool))), key=score)
