"""Numeric checks: each broken behaviour is caught with a specific reason; reference losses and the usual
regularised variants of DPO pass; how a loss pushes is recorded as diagnostics, never a rejection."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from discopop.config import TrainingSettings
from discopop.contract.checks import CheckFailed, check_loss
from discopop.contract.diagnostics import summarize, wrong_way
from discopop.contract.losses import load_loss

SIG = "policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta"
RHO = "    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)\n"


def loss(expr: str, pre: str = "") -> str:
    return f"import torch\nimport torch.nn.functional as F\n\ndef f({SIG}):\n{RHO}{pre}    return {expr}\n"


BAD_LOSSES = [
    (loss("(-F.logsigmoid(beta * rho)).mean()"), "returned shape []"),
    (loss("float(rho.sum())"), "returned float"),
    (loss("(rho > 0).long()"), "expected a floating-point tensor"),
    (loss("torch.log(beta * rho)"), "non-finite loss values"),
    (loss("torch.exp(-rho * 10)"), "non-finite loss values on large inputs"),
    (loss("torch.zeros_like(rho)"), "no gradient"),
    (loss("-F.logsigmoid(beta * rho) * torch.rand_like(rho)"), "not deterministic"),
    # augmented assignment on an input tensor is in place too (the static check forbids in-place methods)
    (loss("-F.logsigmoid(beta * rho)", pre="    reference_chosen_logps *= 1.5\n"),
     "mutated its input tensors in place"),
    (loss("-F.logsigmoid(beta * rho)", pre="    policy_chosen_logps += 1.0\n"), "raised RuntimeError"),
]


@pytest.mark.parametrize(("source", "reason"), BAD_LOSSES)
def test_bad_losses_fail_with_reason(source: str, reason: str) -> None:
    with pytest.raises(CheckFailed) as err:
        check_loss(load_loss(source))
    assert reason in str(err.value)


@pytest.mark.parametrize("path", sorted(Path("discopop/proposals").glob("*.py")), ids=lambda p: p.stem)
def test_reference_losses_pass(path: Path) -> None:
    fn = load_loss(path)
    for seed in (0, 1, 2):
        report = check_loss(fn, seed=seed)
        assert report.uses_beta
        assert len(report.probe) == 25 and len(report.curve["loss"]) == 401
        # no beta named: measured at the default config's training.beta (test_check_inputs)
        assert len(report.fingerprint) == 140 and report.diagnostics["beta"] == TrainingSettings().beta


def test_lrml_is_reported_pushing_the_wrong_way_at_zero() -> None:
    """LRML's derivative at x = 0 is (1 - log 2) / (4 tau) - 3/4 = +0.784 (tau = 0.05): a fact, not a defect."""
    diag = check_loss(load_loss(Path("discopop/proposals/lrml.py")), beta=0.1).diagnostics
    assert diag["slope_at_0"]["rho"] == pytest.approx(0.1 * ((1 - math.log(2)) / (4 * 0.05) - 0.75), rel=1e-4)
    assert "wrong way at rho = 0 on 16/16 examples" in summarize(diag)


# What researchers actually write on top of DPO. Each pushes back somewhere in the range training
# reaches (that is the point of a regulariser); the first two were rejected by the former direction
# check (a slope pooled over one random draw). They must pass, with the push-back recorded where it happens.
DRIFT_C = "    drift_c = policy_chosen_logps - reference_chosen_logps\n"
DRIFT_R = "    drift_r = policy_rejected_logps - reference_rejected_logps\n"
REGULARISED = {
    # DPO plus a squared penalty on both log-ratio drifts.
    "dpo_drift_penalty": loss("-F.logsigmoid(beta * rho) + 0.1 * (drift_c ** 2 + drift_r ** 2)", DRIFT_C + DRIFT_R),
    # DPO plus a hinge keeping the rejected log-prob from falling more than 1 nat below the reference.
    "dpo_rejected_floor": loss("-F.logsigmoid(beta * rho) + 0.5 * torch.relu(-drift_r - 1.0)", DRIFT_R),
    # DPO-Positive (Pal et al. 2024, "Smaug"), lambda = 50: penalise the chosen falling below the reference.
    "dpo_positive": loss("-F.logsigmoid(beta * (rho - 50.0 * torch.relu(-drift_c)))", DRIFT_C),
}


@pytest.mark.parametrize("name", sorted(REGULARISED))
def test_regularised_variants_of_dpo_pass(name: str) -> None:
    fn = load_loss(REGULARISED[name])
    for seed in range(5):
        report = check_loss(fn, seed=seed)
        assert report.uses_beta and report.diagnostics["slope_at_0"]["wrong_way"] == 0


def test_push_back_is_recorded_where_it_happens() -> None:
    diag = check_loss(load_loss(REGULARISED["dpo_rejected_floor"])).diagnostics
    # Only where the probe lets the rejected log-prob fall more than 1 nat below the reference: never
    # at x = -3 (there the rejected side rises or stays in every drift pattern), always at x = 3.
    where = diag["wrong_way"]["rejected_up_lowers_loss"]
    assert 3.0 in where and -3.0 not in where
    assert diag["wrong_way"]["chosen_up_raises_loss"] == []
    assert "raising the rejected log-prob lowers the loss at x = " in summarize(diag)


def test_wrong_way_at_zero_passes_but_is_reported() -> None:
    report = check_loss(load_loss(loss("F.logsigmoid(beta * rho)")))  # DPO with the sign flipped
    diag = report.diagnostics
    assert diag["slope_at_0"]["chosen"] > 0 > diag["slope_at_0"]["rejected"]
    assert diag["slope_at_0"]["wrong_way"] == diag["slope_at_0"]["examples"] == 16
    assert wrong_way(diag)[0] == "wrong way at rho = 0 on 16/16 examples"


def test_dpo_pushes_the_right_way_everywhere_at_the_training_beta() -> None:
    dpo = load_loss(Path("discopop/proposals/dpo.py"))
    for beta in (0.1, 0.05):
        diag = check_loss(dpo, beta=beta).diagnostics
        assert diag["beta"] == beta and wrong_way(diag) == []
        # -d/d rho logsigmoid(beta * rho) = -beta * sigmoid(-x): -beta/2 at 0, -beta*0.953 / -beta*0.047 at x = -3 / 3.
        assert diag["slope_at_0"]["rho"] == pytest.approx(-beta / 2, rel=1e-4)
        assert diag["slope_at_ends"]["-3"] == pytest.approx(-beta * 0.952574, rel=1e-3)
        assert diag["slope_at_ends"]["+3"] == pytest.approx(-beta * 0.047426, rel=1e-3)


def test_non_finite_at_the_training_beta_is_rejected() -> None:
    # Finite at beta 0.1 and 0.5 on the random inputs, but log of a negative number once beta * rho < -2.5.
    with pytest.raises(CheckFailed, match="non-finite"):
        check_loss(load_loss(loss("-F.logsigmoid(beta * rho) + torch.log(beta * rho + 2.5)")), beta=0.1)


def test_beta_ignored_is_reported_not_rejected() -> None:
    report = check_loss(load_loss(loss("-F.logsigmoid(rho)")))
    assert report.uses_beta is False
