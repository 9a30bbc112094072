"""The shape behind LRML's failure at small beta (docs/results.md §3, the β sweep): checked on the shipped loss.

In l = beta * rho, LRML has a well at l = -0.119 (the rejected answer preferred) and a barrier at l = +0.072,
and its slope at rho = 0 is +0.784 * beta: from policy = reference it first trains toward the rejected
answer. In rho the barrier is 0.072 / beta nats, which the short sequences here cross at beta >= 0.5 but
not at beta <= 0.1.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from discopop.contract.losses import load_loss
from discopop.proposers.reference import PROPOSALS_DIR


def _lrml():
    return load_loss((PROPOSALS_DIR / "lrml.py").read_text())


def _loss(fn, rho: torch.Tensor, beta: float) -> torch.Tensor:
    zero = torch.zeros_like(rho)
    return fn(rho, zero, zero, zero, beta)


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5, 2.5])
def test_lrml_slope_at_zero_points_to_the_rejected_answer(beta: float) -> None:
    rho = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    _loss(_lrml(), rho, beta).sum().backward()
    assert rho.grad.item() == pytest.approx(0.784 * beta, rel=1e-3)
    dpo_slope = -beta / 2  # -log sigmoid(beta * rho) at rho = 0: the usual direction
    assert rho.grad.item() > 0 > dpo_slope


def test_lrml_has_a_wrong_side_well_and_a_barrier_in_beta_rho() -> None:
    scaled = torch.linspace(-3, 3, 60001, dtype=torch.float64)
    values = _loss(_lrml(), scaled, 1.0)  # beta = 1: rho is beta * rho
    step = torch.sign(torch.diff(values))
    turns = torch.nonzero(step[1:] != step[:-1]).flatten() + 1
    kinds = ["max" if step[i - 1] > 0 else "min" for i in turns.tolist()]
    assert kinds == ["min", "max"]
    well, barrier = (scaled[i].item() for i in turns.tolist())
    assert well == pytest.approx(-0.119, abs=1e-3) and barrier == pytest.approx(0.072, abs=1e-3)


CODE_FORM = Path(__file__).resolve().parent.parent / "benchmarks" / "losses" / "lrml_code_form.py"


@pytest.mark.parametrize("beta", [0.01, 0.05, 0.1, 0.11, 0.5, 2.5])
def test_lrml_code_form_slope_changes_sign_near_beta_0_1(beta: float) -> None:
    """The released code's form, sigmoid(rho) as the modulation: the first step goes the rejected answer's way
    only below beta = (1 - log 2) / 3 ~ 0.102, the usual way above it (unlike the Eq. 5 form at every beta)."""
    rho = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    _loss(load_loss(CODE_FORM.read_text()), rho, beta).sum().backward()
    assert rho.grad.item() == pytest.approx((1 - math.log(2)) / 4 - 0.75 * beta, rel=1e-9)
    assert (rho.grad.item() > 0) == (beta < (1 - math.log(2)) / 3)
