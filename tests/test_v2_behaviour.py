"""The behaviour fingerprint and map tell apart losses that differ only in how they use the contract-v2 inputs
(issue 28 item 3): DPO, its length-normalised twin, DPO plus the chosen NLL and reference-free DPO are no behaviour
duplicates, because the check's probe draws completion lengths (``checks.draw_lengths``, 1..128, log-uniform) and
derives the NLL from the policy log-probs. With every length 1 (a probe that did not vary them) the
length-normalised twin *is* DPO's duplicate: that is what the drawn lengths buy.

Check reports are computed in this process on references and children of references (trusted code).
"""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch

from discopop.contract import checks
from discopop.contract.losses import load_loss
from discopop.proposers.evolution import reference_parents
from discopop.proposers.evolution.children import write_child
from discopop.proposers.reference import reference_candidate
from discopop.search.behaviour_map import cell
from discopop.search.cascade import same_behaviour

BETA = 0.1
DPO = reference_candidate("dpo").code
NLL_DPO = '''import torch.nn.functional as F


def dpo_nll(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, chosen_nll,
            beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho) + 0.5 * chosen_nll
'''
# The same loss with the NLL written out from the lengths: the probe must not separate what is the same.
NLL_DPO_BY_LENGTHS = NLL_DPO.replace("chosen_nll,\n", "chosen_lengths,\n").replace(
    "0.5 * chosen_nll", "0.5 * (-policy_chosen_logps / chosen_lengths)")


def _child(op: str, seed: int = 0) -> str:
    dpo = next(p for p in reference_parents() if p.name == "dpo")
    cand = write_child(dpo, [(op, [])], set(), random.Random(seed), "evolution")
    assert cand is not None
    return cand.code


def _report(code: str, seed: int = 0) -> dict:
    return checks.check_loss(load_loss(code), seed=seed, beta=BETA).as_dict()


def _unit(report: dict) -> np.ndarray:
    vec = np.asarray(report["fingerprint"], dtype=np.float64)
    return vec / np.linalg.norm(vec)


def _losses() -> dict[str, str]:
    return {"dpo": DPO, "length_norm": _child("length_norm"), "sigmoid_norm": reference_candidate("sigmoid_norm").code,
            "nll": NLL_DPO, "reference_free": next(c for s in range(8) if "lengths" not in (c := _child(
                "reference_free", s))), "simpo": reference_candidate("simpo").code,
            "rpo": reference_candidate("rpo").code}


@pytest.mark.parametrize("seed", [0, 1])
def test_losses_differing_only_in_v2_inputs_are_not_behaviour_twins(seed: int) -> None:
    reports = {name: _report(code, seed) for name, code in _losses().items()}
    twins = {(a, b) for a, b in itertools.combinations(reports, 2)
             if same_behaviour(_unit(reports[a]), _unit(reports[b]))}
    # the evolution's length normalisation of DPO is TRL's sigmoid_norm: the one expected pair
    assert twins == {("length_norm", "sigmoid_norm")}
    cells = {name: cell(report["diagnostics"]) for name, report in reports.items()}
    assert cells["length_norm"] != cells["dpo"] and cells["nll"] != cells["dpo"], cells


def test_the_same_loss_written_with_the_nll_or_the_lengths_is_one_behaviour() -> None:
    assert same_behaviour(_unit(_report(NLL_DPO)), _unit(_report(NLL_DPO_BY_LENGTHS)))


def test_without_drawn_lengths_the_length_normalised_twin_would_be_a_duplicate(monkeypatch) -> None:
    """The counterfactual: a probe feeding every answer length 1 cannot see length normalisation."""
    def ones(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.ones(n), torch.ones(n)

    monkeypatch.setattr(checks, "draw_lengths", ones)
    assert same_behaviour(_unit(_report(DPO)), _unit(_report(_child("length_norm"))))
