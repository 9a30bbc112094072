"""Tests of the offline evolutionary proposer: determinism, contract, lineage, dedup and pass rate."""

from __future__ import annotations

import ast
import builtins
import json
import random
from collections import Counter

import pytest
import torch

from discopop.contract import checks, losses
from discopop.proposers import evolution
from discopop.proposers.base import Candidate, HistoryEntry
from discopop.proposers.evolution import OPERATORS, EvolutionProposer, cleanup, program, reference_parents
from discopop.proposers.reference import available


def _entry(id_: int, name: str, code: str, status: str = "scored", fitness: float | None = 0.0,
           parent_ids: tuple[int, ...] = ()) -> HistoryEntry:
    return HistoryEntry(id=id_, generation=0, name=name, code=code, status=status, fitness=fitness, error=None,
                        parent_ids=parent_ids, proposer="reference")


def reference_history(seed: int = 0) -> list[HistoryEntry]:
    """The reference losses as scored archive rows with made-up fitness values."""
    rng = random.Random(seed)
    return [_entry(i + 10, p.name, p.code, fitness=rng.uniform(0.0, 1.0)) for i, p in enumerate(reference_parents())]


def _as_tuples(cands: list[Candidate]) -> list[tuple]:
    return [(c.name, c.code, c.thought, c.parent_ids, c.info) for c in cands]


def _passes(code: str) -> bool:
    try:
        checks.check_loss(losses.load_loss(code))
    except checks.CheckFailed:
        return False
    return True


def _unguarded_exps(code: str) -> list[str]:
    """Tensor exp calls whose argument is not clamped (they overflow float32 on large margins)."""
    calls = [n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr == "exp" and ast.unparse(n.func.value) != "math"]
    return [ast.unparse(n) for n in calls if not (n.args and ast.unparse(n.args[0]).startswith("torch.clamp("))]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one torch thread


@pytest.fixture(scope="module")
def sixty() -> list[Candidate]:
    """~60 proposals over three generations, each generation's children added to the history."""
    history, proposer, out = reference_history(), EvolutionProposer(seed=123), []
    for generation in range(1, 4):
        cands = proposer.propose(history, 20, generation)
        out += cands
        history += [_entry(len(history) + 100, c.name, c.code, fitness=0.5, parent_ids=tuple(c.parent_ids))
                    for c in cands]
    return out


@pytest.fixture(scope="module")
def sixty_passed(sixty) -> list[bool]:
    return [_passes(c.code) for c in sixty]


def test_same_seed_and_history_give_identical_proposals():
    history = reference_history()
    first = EvolutionProposer(seed=7).propose(history, 12, 1)
    again = EvolutionProposer(seed=7).propose(list(reversed(history)), 12, 1)
    assert len(first) == 12
    assert _as_tuples(first) == _as_tuples(again)


def test_different_seeds_give_different_proposals():
    history = reference_history()
    a = {c.code for c in EvolutionProposer(seed=1).propose(history, 10, 1)}
    b = {c.code for c in EvolutionProposer(seed=2).propose(history, 10, 1)}
    assert a != b


def test_proposals_meet_the_loss_contract(sixty):
    assert len(sixty) == 60
    assert len({c.name for c in sixty}) == len(sixty), "names must be unique within the run"
    for cand in sixty:
        info = losses.static_check(cand.code)
        assert info.function_name == cand.name and info.uses_beta
        fn = next(s for s in ast.parse(cand.code).body if isinstance(s, ast.FunctionDef) and s.name == cand.name)
        assert tuple(a.arg for a in fn.args.args) == losses.LOSS_ARGS
        assert cand.proposer == "evolution" and cand.info["operator"] in OPERATORS
        assert cand.name.isidentifier() and cand.name == cand.name.lower() and cand.thought.endswith(".")
        assert not _unguarded_exps(cand.code), cand.code


def test_parent_ids_refer_to_scored_history():
    history = reference_history() + [_entry(99, "broken", "def x(:\n", status="invalid", fitness=None)]
    ids = {e.id for e in history if e.status == "scored"}
    cands = EvolutionProposer(seed=3).propose(history, 15, 1)
    assert cands and all(c.parent_ids and set(c.parent_ids) <= ids for c in cands)
    assert all(len(c.parent_ids) == (2 if c.info["operator"] in evolution.TWO_PARENTS else 1) for c in cands)


def test_empty_history_evolves_the_reference_losses():
    cands = EvolutionProposer(seed=0).propose([], 8, 0)
    refs = {p.name for p in reference_parents()}
    assert len(cands) == 8 and refs == set(available())
    assert all(c.parent_ids == [] and set(c.info["parents"]) <= refs for c in cands)


def test_without_scored_entries_any_parseable_entry_is_a_parent():
    code = next(p.code for p in reference_parents() if p.name == "dpo")
    history = [_entry(5, "dpo", code, status="train_failed", fitness=None),
               _entry(6, "junk", "import os\n", status="invalid", fitness=None)]
    cands = EvolutionProposer(seed=0, crossover_rate=0.0).propose(history, 5, 1)
    assert cands and all(c.parent_ids == [5] for c in cands)


def test_no_duplicate_code_hash_against_history_or_within_a_call():
    history = reference_history()
    first = EvolutionProposer(seed=4).propose(history, 10, 1)
    # The same seed would write the same children again: all of them must now be skipped as duplicates.
    history += [_entry(200 + i, c.name, c.code) for i, c in enumerate(first)]
    second = EvolutionProposer(seed=4).propose(history, 10, 2)
    known = {losses.code_hash(e.code) for e in history}
    hashes = [losses.code_hash(c.code) for c in second]
    assert second and not known & set(hashes) and len(set(hashes)) == len(hashes)


def test_rng_state_round_trips_through_json():
    history = reference_history()
    proposer = EvolutionProposer(seed=11)
    proposer.propose(history, 3, 1)
    saved = json.loads(json.dumps(proposer.state()))
    expected = proposer.propose(history, 5, 2)
    resumed = EvolutionProposer(seed=999)
    resumed.load_state(saved)
    assert _as_tuples(resumed.propose(history, 5, 2)) == _as_tuples(expected)


def test_at_least_70_percent_pass_the_numeric_checks(sixty, sixty_passed):
    passed = sum(sixty_passed)
    assert passed / len(sixty) >= 0.7, f"only {passed}/{len(sixty)} proposals pass check_loss"


def test_every_operator_is_used_and_yields_valid_losses(sixty, sixty_passed):
    used = Counter(c.info["operator"] for c in sixty)
    assert set(used) == set(OPERATORS), used
    valid = {c.info["operator"] for c, ok in zip(sixty, sixty_passed, strict=True) if ok}
    assert valid == set(OPERATORS)


def _parents(*names: str) -> list[ast.Module]:
    codes = {p.name: p.code for p in reference_parents()}
    return [ast.parse(codes[n]) for n in names]


@pytest.mark.parametrize("op,marker", [("mutate", None), ("mixture", "mix_gate = torch.sigmoid(scaled / TAU_2)"),
                                       ("margin", None), ("crossover", "MIX * _lrml_part("), ("tune", None)])
def test_each_operator_transforms_its_parent(op, marker):
    names = ("lrml", "ipo") if op == "crossover" else ("lrml",)
    before = ast.unparse(_parents(*names)[0])
    for seed in range(5):
        tree, tag, what = OPERATORS[op](_parents(*names), random.Random(seed))
        after = ast.unparse(ast.fix_missing_locations(tree))
        assert after != before and tag and what
        if marker:
            assert marker in after  # lrml names its scaled margin 'scaled' and already has a TAU
        if op == "margin":
            assert "MARGIN" in after or "SCALE" in after
        if op == "crossover":
            assert "def _ipo_part(" in after


def test_crossover_renames_clashing_constants():
    # aql and aqfl both define SCALE and QUANTILE_RATE with different meanings.
    tree, _, _ = OPERATORS["crossover"](_parents("aql", "aqfl"), random.Random(0))
    code = ast.unparse(ast.fix_missing_locations(tree))
    assert "SCALE_2" in code and "QUANTILE_RATE_2" in code
    assert _passes(cleanup.finish(tree, "aql_x_aqfl_1", "A crossover."))


def test_novelty_pressure_prefers_less_used_parents():
    code = {p.name: p.code for p in reference_parents()}
    best, other = _entry(1, "dpo", code["dpo"], fitness=1.0), _entry(2, "hinge", code["hinge"], fitness=0.9)
    children = [_entry(10 + i, f"c{i}", "def x(:\n", status="invalid", fitness=None, parent_ids=(1,))
                for i in range(30)]

    def first_parents(weight: float) -> Counter:
        proposer = EvolutionProposer(seed=0, tournament_size=2, crossover_rate=0.0, novelty_weight=weight)
        return Counter(c.parent_ids[0] for c in proposer.propose([best, other, *children], 30, 1))

    # piecewise children count a use of their second parent too, so weight 1.0 only evens the two lineages out
    assert first_parents(0.0)[1] > first_parents(1.0)[1] > first_parents(2.0)[1]
    assert first_parents(2.0)[2] > first_parents(2.0)[1]


def test_proposer_never_executes_candidate_code(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the proposer must not execute candidate code")

    monkeypatch.setattr(losses, "load_loss", refuse)
    monkeypatch.setattr(builtins, "exec", refuse)
    monkeypatch.setattr(builtins, "eval", refuse)
    assert EvolutionProposer(seed=5).propose(reference_history(), 10, 1)


@pytest.mark.parametrize("kwargs", [{"tournament_size": 0}, {"crossover_rate": 0.8, "constant_rate": 0.3},
                                    {"novelty_weight": -1.0}, {"max_attempts": 0}, {"crossover_rate": -0.1},
                                    {"feedback_chain_length": 0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        EvolutionProposer(seed=0, **kwargs)


def _direction(code: str, beta: float) -> torch.Tensor:
    """Unit policy gradient of the batch-mean loss on pairs with rho over [-3, 3] and uneven side drifts."""
    gen = torch.Generator().manual_seed(0)
    rho = torch.linspace(-3.0, 3.0, 41, dtype=torch.float64)
    ref_c, ref_r = (-20.0 - 40.0 * torch.rand(41, generator=gen, dtype=torch.float64) for _ in range(2))
    split = 0.2 + 0.6 * torch.rand(41, generator=gen, dtype=torch.float64)
    pc, pr = (ref_c + split * rho).requires_grad_(), (ref_r - (1.0 - split) * rho).requires_grad_()
    grads = torch.autograd.grad(losses.load_loss(code)(pc, pr, ref_c, ref_r, beta).mean(), (pc, pr))
    flat = torch.cat(grads)
    return flat / flat.norm()


SHAPE_CASES = [("sides", ("dpo",)), ("sides", ("ipo",)), ("reweight", ("dpo",)), ("reweight", ("hinge",)),
               ("piecewise", ("dpo", "ipo")), ("piecewise", ("hinge",)), ("schedule", ("dpo",)),
               ("schedule", ("ipo",))]


@pytest.mark.parametrize("op,names", SHAPE_CASES)
def test_shape_operators_write_valid_losses_with_a_new_gradient_shape(op, names):
    codes = {p.name: p.code for p in reference_parents()}
    new_shapes = 0
    for seed in range(10):
        tree, tag, what = OPERATORS[op](_parents(*names), random.Random(seed))
        code = cleanup.finish(tree, f"child_{tag}_{seed}", "A child.")
        losses.static_check(code)
        assert _passes(code), code
        child = _direction(code, 0.5)
        closest = max(float(child @ _direction(codes[n], 0.5)) for n in names)
        new_shapes += closest < 0.999
        assert not evolution.same_behaviour(codes[names[0]], code), code
    # a majority: e.g. hinge cut at a threshold and continued by a hinge-like base term keeps hinge's slope
    assert new_shapes > 5, f"only {new_shapes}/10 {op} children of {names} change the gradient's shape"


def _wrap_returns(code: str, template: str) -> str:
    """The same loss with every return value of its public function E replaced by ``template`` of E."""
    tree = ast.parse(code)
    public = program.public_function(tree)
    for node in ast.walk(public):
        if isinstance(node, ast.Return):
            node.value = program.expr(template, E=node.value)
    return ast.unparse(ast.fix_missing_locations(tree))


@pytest.mark.parametrize("name", ["dpo", "ipo", "pfl", "lrml"])
def test_behaviour_filter_refuses_rescaled_shifted_and_rebeta_copies(name):
    code = {p.name: p.code for p in reference_parents()}[name]
    for template in ("2.0 * E", "E + 1.0", "E / 3.0 - 0.5", "0.5 * (E + 2.0)"):
        assert evolution.same_behaviour(code, _wrap_returns(code, template)), template
    rebeta = code.replace("beta", "(3.0 * beta)").replace("(3.0 * beta),", "beta,").replace("(3.0 * beta))", "beta)")
    assert rebeta != code and evolution.same_behaviour(code, rebeta)
    tree = ast.parse(code)
    assert program.margin_site(program.public_function(tree)) is not None
    program.margin_site(program.public_function(tree)).value = program.expr(
        "2.5 * E", E=program.margin_site(program.public_function(tree)).value)
    assert evolution.same_behaviour(code, ast.unparse(tree))  # rho rescaled: only beta changes
    for template in ("E * E", "E + torch.relu(E)", "-1.0 * E"):
        assert not evolution.same_behaviour(code, _wrap_returns(code, template)), template


def test_proposals_are_never_static_copies_of_a_parent(sixty):
    codes = {p.name: p.code for p in reference_parents()} | {c.name: c.code for c in sixty}
    for cand in sixty:
        assert not any(evolution.same_behaviour(codes[p], cand.code) for p in cand.info["parents"]), cand.code
