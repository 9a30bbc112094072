"""The behaviour map: cells from archived diagnostics, elites per cell, a diverse top k, and the evolution
proposer drawing parents across cells (and, in the control arm, from the references without feedback)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from discopop.contract.checks import check_loss
from discopop.contract.losses import load_loss
from discopop.proposers.base import HistoryEntry
from discopop.proposers.evolution import EvolutionProposer
from discopop.proposers.reference import reference_candidate
from discopop.search import behaviour_map


@pytest.fixture(scope="module")
def reference_cells() -> dict[str, tuple[int, ...]]:
    """Cells of a few packaged references, from the diagnostics the checks measure at beta 0.5."""
    names = ("dpo", "hinge", "ipo", "kto_pair", "lrml", "aqfl")
    return {n: behaviour_map.cell(check_loss(load_loss(reference_candidate(n).code), beta=0.5).diagnostics)
            for n in names}


def test_references_with_different_shapes_land_in_different_cells(reference_cells) -> None:
    cells = reference_cells
    assert len({cells["dpo"], cells["hinge"], cells["ipo"], cells["kto_pair"], cells["lrml"]}) == 5
    assert behaviour_map.describe(cells["ipo"]).endswith("right back, side balanced")  # pushes back past a margin
    assert "zero wrong way" in behaviour_map.describe(cells["lrml"])  # pushes the wrong way at rho = 0
    assert cells["aqfl"] == cells["dpo"]  # logistic-like profiles share a cell


def test_a_positive_scale_never_moves_a_loss_to_another_cell() -> None:
    code = reference_candidate("ipo").code
    scaled = code.replace("return (rho - 1.0 / (2.0 * beta)) ** 2", "return 37.0 * (rho - 1.0 / (2.0 * beta)) ** 2")
    assert scaled != code
    cells = [behaviour_map.cell(check_loss(load_loss(c), beta=0.5).diagnostics) for c in (code, scaled)]
    assert cells[0] == cells[1] is not None


def test_missing_or_degenerate_diagnostics_have_no_cell() -> None:
    assert behaviour_map.cell(None) is None
    assert behaviour_map.cell({"slope_at_0": {"rho": 0.0, "chosen": 0.0, "rejected": 0.0},
                               "slope_at_ends": {"-3": 0.0, "+3": 0.0}}) is None
    assert behaviour_map.cell({"slope_at_0": {"rho": "x"}, "slope_at_ends": {"-3": 1.0}}) is None


def entry(i: int, fitness: float | None, cell: tuple[int, ...] | None, status: str = "scored",
          lcb: float | None = None, proposer: str = "evolution", code: str | None = None) -> HistoryEntry:
    return HistoryEntry(id=i, generation=1, name=f"loss_{i}", code=code or reference_candidate("dpo").code,
                        status=status, fitness=fitness, error=None, parent_ids=(), proposer=proposer,
                        fitness_lcb=lcb, behaviour_cell=cell)


def test_elites_keep_the_best_lower_bound_of_each_cell_and_diverse_top_k_one_per_cell() -> None:
    a, b = (0, 1, 1, 1), (0, 0, 2, 1)
    history = [entry(1, 0.95, a, lcb=0.93), entry(2, 0.96, a, lcb=0.92), entry(3, 0.90, b, lcb=0.89),
               entry(4, 0.99, b, status="invalid"), entry(5, 0.80, None), entry(6, 0.70, None)]
    elites = behaviour_map.elites(history)
    assert [e.id for e in elites] == [1, 3, 5, 6]  # 1 beats 2 on the lower bound; unmeasured rows stand alone
    assert [e.id for e in behaviour_map.diverse_top_k(history, 2)] == [1, 3]
    assert behaviour_map.diverse_top_k(history, 0) == []


def test_parents_are_drawn_across_cells_not_only_from_the_best_cell() -> None:
    """Ten near-identical strong losses in one cell and weaker ones in four others: with ``cells`` every cell's
    elite is a parent; with ``flat`` the crowded cell's losses supply most parents."""
    codes = {n: reference_candidate(n).code for n in ("dpo", "hinge", "ipo", "kto_pair", "lrml")}
    crowded = [entry(i, 0.95 + i * 1e-4, (0, 1, 1, 1), lcb=0.94 + i * 1e-4, code=codes["dpo"]) for i in range(1, 11)]
    others = [entry(20 + j, 0.90, (j, 2, 3, 1), lcb=0.89, code=codes[n])
              for j, n in enumerate(("hinge", "ipo", "kto_pair", "lrml"))]
    history = crowded + others
    drawn = {}
    for population in ("cells", "flat"):
        proposer = EvolutionProposer(seed=3, population=population)
        parents = Counter(pid for c in proposer.propose(history, 60, 1) for pid in c.parent_ids)
        drawn[population] = sum(n for pid, n in parents.items() if pid >= 20) / sum(parents.values())
    assert drawn["cells"] > 0.4 > drawn["flat"]


def test_selection_ranks_by_the_lower_bound() -> None:
    """Two parents, tournament over both: the one with the higher lower bound wins, whatever one seed said."""
    codes = [reference_candidate(n).code for n in ("hinge", "ipo")]
    history = [entry(1, 0.99, (0, 0, 2, 1), lcb=0.90, code=codes[0]), entry(2, 0.95, (0, 2, 3, 1), lcb=0.94,
                                                                           code=codes[1])]
    proposer = EvolutionProposer(seed=0, tournament_size=2, crossover_rate=0.0, novelty_weight=0.0)
    kids = proposer.propose(history, 10, 1)
    assert kids and all(c.parent_ids[0] == 2 for c in kids)


def test_control_arm_ignores_fitness_and_draws_from_the_references_only() -> None:
    refs = [replace(entry(i + 1, None, None, proposer="reference", code=reference_candidate(n).code), name=n)
            for i, n in enumerate(("dpo", "hinge", "ipo", "kto_pair"))]
    # A strong evolved loss, and fitness on the references: the control arm must use neither.
    best = entry(99, 0.99, (0, 0, 0, 0), lcb=0.99, code=reference_candidate("aqfl").code)
    scored = [replace(r, status="scored", fitness=0.5 + 0.1 * i) for i, r in enumerate(refs)]
    a = EvolutionProposer(seed=5, history_mode="none").propose([*scored, best], 30, 1)
    b = EvolutionProposer(seed=5, history_mode="none").propose([*refs, best], 30, 1)
    assert [c.code for c in a] == [c.code for c in b]  # fitness changes nothing
    assert len(a) == 30 and all(set(c.parent_ids) <= {1, 2, 3, 4} and c.parent_ids for c in a)
    chains = Counter(len(c.info["operator"].split("+")) for c in a)
    assert set(chains) <= {1, 2, 3} and len(chains) > 1  # random chains of 1..chain_length operators
    first_parents = Counter(c.parent_ids[0] for c in a)
    assert len(first_parents) >= 3  # uniform over the references, not the fittest


def test_feedback_chains_draw_steps_like_the_control_arm_on_tournament_winners() -> None:
    """``feedback_chain_length`` = 3: chains of 1..3 operators, as the control arm draws them, but the first
    parent is the archive's tournament winner (here the one loss with a higher lower bound), not a reference
    drawn at random; 1 (the default) keeps the one-operator children, draw for draw."""
    codes = [reference_candidate(n).code for n in ("hinge", "ipo")]
    history = [entry(1, 0.99, (0, 0, 2, 1), lcb=0.90, code=codes[0]), entry(2, 0.95, (0, 2, 3, 1), lcb=0.94,
                                                                           code=codes[1])]
    chained = EvolutionProposer(seed=4, tournament_size=2, crossover_rate=0.0, novelty_weight=0.0,
                                feedback_chain_length=3).propose(history, 30, 1)
    chains = Counter(len(c.info["operator"].split("+")) for c in chained)
    assert len(chained) == 30 and set(chains) <= {1, 2, 3} and len(chains) > 1
    assert all(c.parent_ids[0] == 2 for c in chained)  # the tournament's winner, every time
    single = EvolutionProposer(seed=4, tournament_size=2, crossover_rate=0.0, novelty_weight=0.0)
    explicit = EvolutionProposer(seed=4, tournament_size=2, crossover_rate=0.0, novelty_weight=0.0,
                                 feedback_chain_length=1)
    one_op = single.propose(history, 10, 1)
    assert [c.code for c in one_op] == [c.code for c in explicit.propose(history, 10, 1)]
    assert all("+" not in c.info["operator"] for c in one_op)
