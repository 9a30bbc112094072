"""Numeric checks: each broken behaviour is caught with a specific reason; reference losses pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from discopop.checks import CheckFailed, check_loss
from discopop.losses import load_loss

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
    (loss("F.logsigmoid(beta * rho)"), "raising the chosen log-prob raises the mean loss"),
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
    report = check_loss(load_loss(path))
    assert report.uses_beta
    assert len(report.probe) == 25 and len(report.curve["loss"]) == 401


def test_beta_ignored_is_reported_not_rejected() -> None:
    report = check_loss(load_loss(loss("-F.logsigmoid(rho)")))
    assert report.uses_beta is False
