"""The offline evolutionary proposer itself: settings, the RNG and its saved state, and one generation's loop.

Everything it does is delegated: ``selection`` (feedback arm) or ``control`` (``history_mode: none``) pick
parents and operator steps, ``children`` writes and filters the child. This module only checks the settings,
keeps the one seeded ``random.Random`` every choice draws from, and keeps proposals new within a run.
"""

from __future__ import annotations

import random
from collections import Counter

from discopop.config import EvolutionSettings
from discopop.config.proposer import HISTORY_MODES, POPULATIONS
from discopop.proposers.base import Candidate, HistoryEntry, Proposer
from discopop.proposers.evolution.children import write_child
from discopop.proposers.evolution.control import chain_steps, random_chain, reference_pool
from discopop.proposers.evolution.operators import TWO_PARENTS, draw_operator
from discopop.proposers.evolution.program import code_hash
from discopop.proposers.evolution.selection import Parent, can_cross, parent_pool, tournament

_DEFAULTS = EvolutionSettings()  # the defaults are declared once, with their help, on the settings


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
        chain_length: the longest operator chain of a ``none`` child.
        feedback_chain_length: the longest operator chain of a feedback child. 1 (default): one operator per
            generation, so chains grow with the lineage instead; ``chain_length``: both arms draw a child's steps
            alike and differ only in where its parents come from (the archive's tournament or the references).
        lookahead: 1 asks the loop to propose the next generation while this one trains (``Proposer.lookahead``);
            0 (default): proposing takes milliseconds here, so lock step costs nothing and sees one generation more.
        v2_operators: also draw ``operators.V2_OPERATORS`` (children with contract-v2 inputs); off by default, so a
            run's draws, and its archive, are those of a run before them.
    """

    name = "evolution"

    def __init__(self, seed: int, tournament_size: int = _DEFAULTS.tournament_size,
                 crossover_rate: float = _DEFAULTS.crossover_rate, constant_rate: float = _DEFAULTS.constant_rate,
                 novelty_weight: float = _DEFAULTS.novelty_weight, max_attempts: int = _DEFAULTS.max_attempts,
                 population: str = _DEFAULTS.population, history_mode: str = _DEFAULTS.history_mode,
                 chain_length: int = _DEFAULTS.chain_length, lookahead: int = _DEFAULTS.lookahead,
                 v2_operators: bool = _DEFAULTS.v2_operators,
                 feedback_chain_length: int = _DEFAULTS.feedback_chain_length):
        EvolutionSettings(tournament_size=tournament_size, crossover_rate=crossover_rate, constant_rate=constant_rate,
                          novelty_weight=novelty_weight, max_attempts=max_attempts,
                          chain_length=chain_length, lookahead=lookahead,
                          feedback_chain_length=feedback_chain_length).check_ranges()
        if population not in POPULATIONS or history_mode not in HISTORY_MODES:
            raise ValueError(f"population must be one of {', '.join(POPULATIONS)} and history_mode one of "
                             f"{', '.join(HISTORY_MODES)}, got {population!r}, {history_mode!r}")
        self.lookahead = lookahead
        self.tournament_size, self.crossover_rate, self.constant_rate = tournament_size, crossover_rate, constant_rate
        self.novelty_weight, self.max_attempts = novelty_weight, max_attempts
        self.population, self.history_mode, self.chain_length = population, history_mode, chain_length
        self.feedback_chain_length = feedback_chain_length
        self.v2_operators = bool(v2_operators)
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
        pool = reference_pool(history) if blind else parent_pool(history, self.population)
        # Seen code and names only keep proposals new; a blind child never reads a fitness or an outcome.
        seen, names = {code_hash(e.code) for e in history}, {e.name for e in history}
        uses = Counter(pid for e in history for pid in e.parent_ids)
        out: list[Candidate] = []
        for _ in range(k):
            for _attempt in range(self.max_attempts):
                cand = self._blind_child(pool, names) if blind else self._child(pool, uses, names)
                if cand is not None and code_hash(cand.code) not in seen:
                    seen.add(code_hash(cand.code))
                    names.add(cand.name)
                    uses.update(cand.parent_ids or cand.info["parents"])
                    out.append(cand)
                    break
        return out

    def _select(self, pool: list[Parent], uses: Counter) -> Parent:
        return tournament(pool, uses, self._rng, self.tournament_size, self.novelty_weight)

    def _child(self, pool: list[Parent], uses: Counter, names: set[str]) -> Candidate | None:
        """One operator on a tournament winner (and, for a two-parent operator, a second winner of other code);
        a chain of them where ``feedback_chain_length`` > 1."""
        if self.feedback_chain_length > 1:
            return self._chained_child(pool, uses, names)
        op = draw_operator(self._rng, self.crossover_rate, self.constant_rate, can_cross(pool), self.v2_operators)
        parents = [self._select(pool, uses)]
        if op in TWO_PARENTS and can_cross(pool):
            parents.append(self._select([p for p in pool if p.hash != parents[0].hash], uses))
        return write_child(parents[0], [(op, parents[1:])], names, self._rng, self.name)

    def _chained_child(self, pool: list[Parent], uses: Counter, names: set[str]) -> Candidate | None:
        """1..``feedback_chain_length`` operator steps on a tournament winner, drawn as the control arm draws its
        chains (``control.chain_steps``), with each further parent a tournament winner of other code."""
        first = self._select(pool, uses)
        others = [p for p in pool if p.hash != first.hash]
        steps = chain_steps(self._rng, self.feedback_chain_length, self.crossover_rate, self.constant_rate,
                            self.v2_operators, (lambda: self._select(others, uses)) if others else None)
        return write_child(first, steps, names, self._rng, self.name)

    def _blind_child(self, pool: list[Parent], names: set[str]) -> Candidate | None:
        first, steps = random_chain(pool, self._rng, self.chain_length, self.crossover_rate, self.constant_rate,
                                    self.v2_operators)
        return write_child(first, steps, names, self._rng, self.name)
