"""The original DiscoPOP method form (``self`` first, ``self.beta``, imports in the body) is accepted as input
and rewritten into the contract form before the static check; any other use of ``self`` is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from discopop.losses import LossRejected, code_hash, load_loss, normalise_loss, static_check

PAPER = Path(__file__).resolve().parent / "paper_losses"
# LRML as the DiscoPOP trainer writes it: a method, still indented as inside the class body.
METHOD = '''
    def log_ratio_modulated_loss(
        self,
        policy_chosen_logps: torch.FloatTensor,
        policy_rejected_logps: torch.FloatTensor,
        reference_chosen_logps: torch.FloatTensor,
        reference_rejected_logps: torch.FloatTensor,
    ) -> torch.FloatTensor:
        import torch
        import torch.nn.functional as F

        tau = 0.05
        pi_logratios = policy_chosen_logps - policy_rejected_logps
        ref_logratios = reference_chosen_logps - reference_rejected_logps
        logits = (pi_logratios - ref_logratios) * self.beta
        log_ratio_modulation = torch.sigmoid(logits / tau)
        logistic_component = -F.logsigmoid(logits)
        exp_component = torch.exp(-logits)
        return logistic_component * (1 - log_ratio_modulation) + exp_component * log_ratio_modulation
'''


def inputs() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(16, generator=gen) * 4 - 20 for _ in range(4)]


def test_method_form_becomes_the_contract_form() -> None:
    text = normalise_loss(METHOD)
    assert "self" not in text
    assert text.index("import torch.nn.functional as F") < text.index("def log_ratio_modulated_loss(")
    assert static_check(text).function_name == "log_ratio_modulated_loss"
    assert static_check(METHOD).uses_beta  # callers may pass the method form as it is


def test_method_form_loads_and_matches_the_contract_lrml() -> None:
    method, contract = load_loss(METHOD), load_loss(PAPER / "lrml.py")
    assert torch.allclose(method(*inputs(), 0.1), contract(*inputs(), 0.1))
    assert "self" not in method.discopop_source


def test_contract_form_is_returned_unchanged() -> None:
    source = (PAPER / "cell.py").read_text()
    assert normalise_loss(source) is source


def test_method_and_contract_forms_hash_alike() -> None:
    assert code_hash(METHOD) == code_hash(normalise_loss(METHOD))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (("* self.beta", "* self.beta * (1 - self.label_smoothing)"), "'self.label_smoothing' is not available"),
        (("tau = 0.05", "tau = self"), "'self' may only be used as self.beta"),
        (("tau = 0.05", "self.beta = 0.05"), "'self.beta' is not available"),
        (("import torch\n", "import os\n"), "import of 'os' is not allowed"),
    ],
)
def test_other_uses_of_self_and_forbidden_imports_are_refused(change: tuple[str, str], reason: str) -> None:
    source = METHOD.replace(*change)
    assert source != METHOD
    for check in (static_check, load_loss):
        with pytest.raises(LossRejected, match=None) as err:
            check(source)
        assert reason in str(err.value) and "\n" not in str(err.value)
