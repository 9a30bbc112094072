"""Every TRL ``loss_type`` that is a function of the four sequence log-probs and beta has a proposals/ file that
computes the same loss and the same gradients with respect to all four inputs, against TRL's own code
(``tests/trl_losses.py``: a real DPOTrainer's ``_compute_loss`` fed given log-probs).

Float64 inputs, so a difference above 1e-6 is a formula difference, not round-off. The files' constants are
checked at their default and one moved value (exo_pair's eps, LRML's tau, the flip rates), so a constant means
what the TRL config field it mirrors means. Training-level parity of a few of them (same parameters after TRL's
trainer and ours) is in tests/test_trl_adapter.py and tests/test_trl_parity_more.py.
"""

from __future__ import annotations

import pytest
import torch
from trl_losses import BETA, CASES, Case, compare, our_loss, parity_inputs, trl_loss, trl_trainer

from discopop.config import BASELINES
from discopop.config.references import available

TOL = 1e-6


@pytest.fixture(scope="module")
def trainers() -> dict[str, object]:
    """One real trainer per TRL config, built lazily and shared by the tests of this file (~0.3 s of CPU each)."""
    return {}


def trainer_for(trainers: dict[str, object], case: Case):
    key = repr(sorted(case.trl.items()))
    if key not in trainers:
        trainers[key] = trl_trainer(BETA, **case.trl)
    return trainers[key]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.label)
def test_loss_and_gradients_equal_trls(trainers: dict[str, object], case: Case) -> None:
    dloss, dgrad, scale = compare(case, trainer_for(trainers, case))
    assert scale > 1e-3, "TRL's gradient is ~0 here: the comparison would prove nothing"
    assert dloss < TOL and dgrad < TOL, f"{case.label}: |dloss| {dloss:.2e}, |dgrad| {dgrad:.2e}"


def test_the_comparison_sees_a_difference(trainers: dict[str, object]) -> None:
    """TRL's length-normalised IPO is not ours at the same beta, and sigmoid is not hinge: the harness can fail."""
    ipo_l3 = next(c for c in CASES if c.label.startswith("ipo (L=") and c.tokens > 1)
    plain = Case("ipo, not normalised", ipo_l3.trl, "ipo", tokens=ipo_l3.tokens)
    dloss, dgrad, _ = compare(plain, trainer_for(trainers, ipo_l3))
    assert dloss > 1e-2 and dgrad > 1e-3
    sigmoid = next(c for c in CASES if c.label == "sigmoid")
    dloss, dgrad, _ = compare(Case("hinge vs sigmoid", sigmoid.trl, "hinge"), trainer_for(trainers, sigmoid))
    assert dloss > 1e-2 and dgrad > 1e-3


def test_aot_depends_on_the_batch_and_not_on_its_order(trainers: dict[str, object]) -> None:
    """AOT sorts over the batch: its mean loss is order-free, as TRL's is, but not a sum of per-pair terms."""
    case = next(c for c in CASES if c.label == "aot (eps=0)")
    inputs = parity_inputs(seed=1)
    order = torch.randperm(inputs[0].shape[0], generator=torch.Generator().manual_seed(0))
    shuffled = tuple(t[order] for t in inputs)
    fn = our_loss(case)
    assert float(fn(*shuffled, BETA).mean()) == pytest.approx(float(fn(*inputs, BETA).mean()), abs=1e-12)
    assert float(trl_loss(trainer_for(trainers, case), shuffled)) == pytest.approx(float(fn(*inputs, BETA).mean()),
                                                                                  abs=TOL)
    halves = [fn(*(t[:8] for t in inputs), BETA).mean(), fn(*(t[8:] for t in inputs), BETA).mean()]
    assert float(sum(halves) / 2) != pytest.approx(float(fn(*inputs, BETA).mean()), abs=1e-4)


def test_the_new_references_are_available_by_name_but_not_default_baselines() -> None:
    new = {"exo_pair", "nca_pair", "bco_pair", "sppo_hard", "apo_zero", "apo_down", "aot", "aot_unpaired"}
    assert new <= set(available())
    assert not new & set(BASELINES), "a default run must not get longer"
    assert new <= {c.reference for c in CASES}
