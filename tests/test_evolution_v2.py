"""The contract-v2 evolution operators (issue 28 item 3): length normalisation, NLL mixing and reference-free
children of four-input parents, drawn only with ``proposer.v2_operators`` (off by default).

Children are written from the shipped references (trusted) and checked in this process for their shape; one child
of each operator also goes through the sandboxed check job (the loss oracle's numeric checks), as a proposal does:
all three in one kept worker (``CheckWorker``, as a run's warm worker; each in an oracle of its own).
"""

from __future__ import annotations

import ast
import random
from collections import Counter
from collections.abc import Iterator

import pytest
import torch

from discopop.cli.check import CheckWorker, check_source
from discopop.contract import checks, losses
from discopop.contract.inputs import LENGTHS, NLL, REFERENCE
from discopop.proposers.base import Candidate, HistoryEntry
from discopop.proposers.evolution import EvolutionProposer, reference_parents
from discopop.proposers.evolution.children import write_child
from discopop.proposers.evolution.operators import SINGLE_OPERATORS, V2_ODDS, V2_OPERATORS, draw_operator
from discopop.proposers.reference import reference_candidate

PARENTS = ("dpo", "lrml", "hinge", "ipo", "kto_pair", "rdpo")
EXPECTED_INPUTS = {"length_norm": (*losses.LOSS_ARGS[:4], *LENGTHS), "nll_mix": (*losses.LOSS_ARGS[:4], NLL)}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def child(op: str, parent: str, seed: int = 0) -> Candidate:
    first = next(p for p in reference_parents() if p.name == parent)
    cand = write_child(first, [(op, [])], set(), random.Random(seed), "evolution")
    assert cand is not None, f"{op} wrote no child of {parent}"
    return cand


def _gradients(code: str, inputs: tuple[torch.Tensor, ...], lengths: tuple[torch.Tensor, torch.Tensor],
               beta: float) -> list[torch.Tensor]:
    """Mean loss and policy gradients of ``code`` (through the checks' own input builder) on float64 inputs."""
    fn = losses.load_loss(code)
    leaves = [t.clone().requires_grad_(i < 2) for i, t in enumerate(inputs)]
    out = fn(*checks.loss_inputs(fn, (*leaves, *lengths)), beta)
    grads = torch.autograd.grad(out.mean(), leaves[:2])
    return [out.mean().detach(), *grads]


@pytest.mark.parametrize("op", sorted(V2_OPERATORS))
@pytest.mark.parametrize("parent", PARENTS)
def test_each_operator_writes_a_v2_child_the_checks_accept(op: str, parent: str) -> None:
    cand = child(op, parent)
    info = losses.static_check(cand.code)
    if op in EXPECTED_INPUTS:
        assert info.inputs == EXPECTED_INPUTS[op]
    else:  # reference-free: neither reference input, with or without the lengths
        assert not set(REFERENCE) & set(info.inputs) and info.inputs[:2] == losses.LOSS_ARGS[:2]
    report = checks.check_loss(losses.load_loss(cand.code), beta=0.1)
    assert report.fingerprint
    assert cand.info["operator"] == op and cand.parent_ids == [] and cand.info["parents"] == [parent]


@pytest.fixture(scope="module")
def kept_worker() -> Iterator[CheckWorker]:
    worker = CheckWorker()
    yield worker
    worker.close()


@pytest.mark.parametrize("op", sorted(V2_OPERATORS))
def test_each_operators_child_passes_the_sandboxed_oracle_checks(op: str, kept_worker: CheckWorker) -> None:
    verdict = check_source(child(op, "lrml").code, timeout=60, worker=kept_worker)
    assert verdict["valid"], verdict
    assert kept_worker.starts == 1 and kept_worker.alive()  # a valid check never costs its worker


def test_the_children_of_dpo_are_the_v2_references() -> None:
    """length_norm(DPO) is sigmoid_norm, nll_mix(DPO) is RPO at the drawn weight, reference_free(DPO) is SimPO at
    margin 0 (or its unnormalised form): the same losses and gradients on inputs with unequal lengths."""
    gen = torch.Generator().manual_seed(0)
    lengths = (torch.randint(1, 40, (24,), generator=gen).double(), torch.randint(1, 40, (24,), generator=gen).double())
    refs = -torch.rand(2, 24, generator=gen, dtype=torch.float64) * lengths[0] - 1.0
    pol = refs + torch.randn(2, 24, generator=gen, dtype=torch.float64)
    inputs = (pol[0], pol[1], refs[0], refs[1])
    norm = child("length_norm", "dpo")
    expected = {"length_norm": reference_candidate("sigmoid_norm").code}
    nll = child("nll_mix", "dpo")
    weight = float(next(s.value.value for s in ast.parse(nll.code).body if isinstance(s, ast.Assign)
                        and s.targets[0].id == "NLL_WEIGHT"))
    # RPO's NLL is the batch's token mean; the child's is per example: the same where every answer has one length
    same_length = (torch.full_like(lengths[0], 7.0), lengths[1])
    rpo = reference_candidate("rpo", constants={"ALPHA": weight}).code
    for name, code, ref, lens in [("length_norm", norm.code, expected["length_norm"], lengths),
                                  ("nll_mix", nll.code, rpo, same_length)]:
        ours, theirs = _gradients(code, inputs, lens, 0.3), _gradients(ref, inputs, lens, 0.3)
        for a, b in zip(ours, theirs, strict=True):
            assert torch.allclose(a, b, atol=1e-12), name
    free = [child("reference_free", "dpo", seed) for seed in range(8)]
    simpo_like = next(c for c in free if "chosen_lengths" in c.code)
    simpo = reference_candidate("simpo", constants={"GAMMA": 0.0}).code
    for a, b in zip(_gradients(simpo_like.code, inputs, lengths, 2.0), _gradients(simpo, inputs, lengths, 2.0),
                    strict=True):
        assert torch.allclose(a, b, atol=1e-12)
    assert any("chosen_lengths" not in c.code for c in free)  # the plain reference-free form is drawn too


def _history() -> list[HistoryEntry]:
    rng = random.Random(0)
    return [HistoryEntry(id=i + 10, generation=0, name=p.name, code=p.code, status="scored",
                         fitness=rng.uniform(0.0, 1.0), error=None, parent_ids=(), proposer="reference")
            for i, p in enumerate(reference_parents())]


def _proposals(seed: int, v2: bool, history_mode: str = "feedback") -> list[tuple]:
    out = EvolutionProposer(seed=seed, v2_operators=v2, history_mode=history_mode).propose(_history(), 40, 1)
    return [(c.name, c.code, c.thought, c.parent_ids, c.info) for c in out]


@pytest.mark.parametrize("history_mode", ["feedback", "none"])
def test_v2_children_are_seeded_and_drawn_only_when_allowed(history_mode: str) -> None:
    on = _proposals(3, True, history_mode)
    assert on == _proposals(3, True, history_mode)  # same seed, same children
    used = Counter(info["operator"].split("+")[-1] for *_, info in on)
    assert set(V2_OPERATORS) <= set(used), used
    for _, code, *_ in on:
        losses.static_check(code)  # every child, v1 or v2, passes the static check
    off = _proposals(3, False, history_mode)
    assert not {info["operator"] for *_, info in off} & set(V2_OPERATORS)
    assert all(losses.static_check(code).inputs == losses.LOSS_ARGS[:4] for _, code, *_ in off)


def _draw_before_v2(rng: random.Random, crossover_rate: float, constant_rate: float, can_cross: bool) -> str:
    """``draw_operator`` as it was before the v2 operators (commit f8db5be)."""
    r = rng.random()
    if r < crossover_rate and can_cross:
        return "crossover"
    if r < crossover_rate + constant_rate:
        return "tune"
    return rng.choices(list(SINGLE_OPERATORS), weights=list(SINGLE_OPERATORS.values()))[0]


def test_the_draw_without_v2_is_the_draw_before_them() -> None:
    """v2 off (the default) consumes the generator exactly as the draw did before the v2 operators existed."""
    a, b = random.Random(5), random.Random(5)
    drawn = [draw_operator(a, 0.1, 0.05, i % 3 > 0) for i in range(500)]
    assert drawn == [_draw_before_v2(b, 0.1, 0.05, i % 3 > 0) for i in range(500)]
    assert a.random() == b.random()
    with_v2 = Counter(draw_operator(random.Random(i), 0.1, 0.05, True, v2=True) for i in range(2000))
    assert set(V2_ODDS) <= set(with_v2)
