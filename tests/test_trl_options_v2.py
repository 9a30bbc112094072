"""Contract-v2 winners in TRL's own options (issue 28 item 4): RPO is ``DPOConfig(loss_type=["sigmoid", "sft"])``,
``sigmoid_norm`` is itself, ``ipo_norm`` is TRL's (length-normalised) ``ipo``, SimPO (plus an NLL term) is
``CPOConfig(loss_type="simpo", simpo_gamma, cpo_alpha)``; ORPO and the paper's summed IPO are none of them. Each found
option set trains a tiny model as the loss does through ``DiscoveredLossDPOTrainer``, on pairs whose chosen and
rejected answers differ in length (so a length normalisation done differently would show).

Check reports are computed in this process on test-owned or reference code (the product computes them in the
sandboxed check job); the matching never runs candidate code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from datasets import Dataset
from helper_trl_train import max_param_diff
from transformers import GPT2LMHeadModel
from trl import DPOConfig, DPOTrainer
from trl.experimental.cpo import CPOConfig, CPOTrainer

from discopop.archive import Archive
from discopop.contract.checks import check_loss
from discopop.contract.inputs import V1_INPUTS
from discopop.contract.losses import load_loss, signature_inputs
from discopop.dpo_trainer import DiscoveredLossDPOTrainer
from discopop.proposers.base import Candidate
from discopop.proposers.reference import reference_candidate
from discopop.report.export import export_candidate
from discopop.report.trl_options import TrlOptions, match_trl
from discopop.tasks.tiny import save_tiny, tiny_causal_lm

STEPS = 4
# Answers of 1-3 characters (+ EOS): the chosen and the rejected answer of a pair differ in length.
PAIRS = [(13, 7, "2"), (40, 41, "8"), (9, 9, "180"), (25, 30, "5"), (70, 11, "810"), (5, 60, "6"), (3, 3, "66"),
         (12, 20, "3")]


def simpo_nll(gamma: float, alpha: float) -> str:
    """SimPO plus ``alpha`` times the chosen answers' token-mean NLL: written as a user would."""
    return f'''import torch.nn.functional as F


def simpo_nll(policy_chosen_logps, policy_rejected_logps, chosen_lengths, rejected_lengths, chosen_nll, beta):
    margin = policy_chosen_logps / chosen_lengths - policy_rejected_logps / rejected_lengths
    nll = (chosen_nll * chosen_lengths).sum() / chosen_lengths.sum()
    return -F.logsigmoid(beta * margin - {gamma!r}) + {alpha!r} * nll
'''


def half_ipo_norm() -> str:
    """TRL's length-normalised IPO at half weight (an exact rescaling: ``loss_weights=[0.5]``)."""
    return reference_candidate("ipo_norm").code.replace("return (chosen", "return 0.5 * (chosen")


def report(code: str, beta: float) -> dict:
    return check_loss(load_loss(code), beta=beta).as_dict()


@pytest.mark.parametrize(("code", "expected"), [
    (reference_candidate("rpo", constants={"ALPHA": 0.25}).code,
     TrlOptions(("sft", "sigmoid"), (0.25, 1.0), 0.5)),
    (reference_candidate("sigmoid_norm").code, TrlOptions(("sigmoid_norm",), (1.0,), 0.5)),
    (reference_candidate("simpo", constants={"GAMMA": 1.35}).code,
     TrlOptions(("simpo",), (1.0,), 0.5, trainer="CPO", simpo_gamma=1.35, cpo_alpha=0.0)),
    (simpo_nll(0.7, 0.5), TrlOptions(("simpo",), (1.0,), 0.5, trainer="CPO", simpo_gamma=0.7, cpo_alpha=0.5)),
    (reference_candidate("ipo_norm").code, TrlOptions(("ipo",), (1.0,), 0.5)),
    (half_ipo_norm(), TrlOptions(("ipo",), (0.5,), 0.5)),
], ids=["rpo_0.25", "sigmoid_norm", "simpo", "simpo_nll", "ipo_norm", "half_ipo_norm"])
def test_v2_references_are_found_as_trls_options(code: str, expected: TrlOptions) -> None:
    options = match_trl(report(code, 0.5))
    assert options is not None
    assert {k: v for k, v in options.as_dict().items() if k != "residual"} == \
        {k: v for k, v in expected.as_dict().items() if k != "residual"}
    assert options.residual < 1e-5


@pytest.mark.parametrize("code", [
    reference_candidate("orpo").code,  # the odds ratio: not in TRL's DPO/CPO options
    simpo_nll(0.7, 0.5).replace("margin - 0.7", "margin * 1.05 - 0.7"),  # SimPO's gradient at 1.05x: no CPO weight
    reference_candidate("simpo").code.replace("policy_chosen_logps / chosen_lengths", "policy_chosen_logps"),
    reference_candidate("ipo").code,  # the paper's summed IPO: TRL's ipo only on one-token answers
    reference_candidate("ipo_norm").code.replace("1 / (2 * beta)", "1 / (2.1 * beta)"),  # another target margin
], ids=["orpo", "scaled_simpo", "half_normalised_simpo", "summed_ipo", "ipo_norm_other_target"])
def test_near_misses_are_not_claimed(code: str) -> None:
    assert match_trl(report(code, 0.5)) is None


def test_the_cpo_config_text() -> None:
    options = match_trl(report(simpo_nll(0.7, 0.5), 2.0))
    assert options is not None
    assert options.config_text(1e-4) == \
        "CPOConfig(loss_type='simpo', cpo_alpha=0.5, simpo_gamma=0.7, beta=2.0, learning_rate=0.0001)"


def _train(tmp_path: Path, trainer: str, config: dict[str, Any], loss: str | None = None):
    """Train STEPS steps of a tiny GPT-2 with TRL's DPOTrainer / CPOTrainer at ``config`` or, with ``loss``,
    DiscoveredLossDPOTrainer; return the logged losses and the parameters."""
    model, tok = tiny_causal_lm()
    save_tiny(tmp_path / "model", model, tok)
    rows = [{"prompt": f"{a:02d}+{b:02d}=", "chosen": str(a + b), "rejected": r} for a, b, r in PAIRS]
    assert any(len(r["chosen"]) != len(r["rejected"]) for r in rows)
    model = GPT2LMHeadModel.from_pretrained(tmp_path / "model")
    common = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=STEPS, logging_steps=1,
                  report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True, bf16=False,
                  learning_rate=1e-3, **config)
    kwargs = {"model": model, "train_dataset": Dataset.from_list(rows), "processing_class": tok}
    if loss is not None:
        run = DiscoveredLossDPOTrainer(loss_fn=loss, args=DPOConfig(**common), **kwargs)
    elif trainer == "CPO":
        run = CPOTrainer(args=CPOConfig(**common), **kwargs)
    else:
        run = DPOTrainer(args=DPOConfig(**common), **kwargs)
    run.train()
    losses = [h["loss"] for h in run.state.log_history if "loss" in h]
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.slow  # three tiny fine-tunes each, ~27 s under load (benchmarks/README.md: the long tests)
@pytest.mark.parametrize(("code", "beta"), [(reference_candidate("rpo", constants={"ALPHA": 0.25}).code, 0.1),
                                            (simpo_nll(0.7, 0.5), 2.0), (reference_candidate("ipo_norm").code, 0.5)],
                         ids=["rpo_0.25", "simpo_nll", "ipo_norm"])
def test_the_reported_options_train_as_the_loss_does(tmp_path: Path, code: str, beta: float) -> None:
    options = match_trl(report(code, beta))
    assert options is not None
    if options.trainer == "CPO":
        config = {"loss_type": "simpo", "simpo_gamma": options.simpo_gamma, "cpo_alpha": options.cpo_alpha}
    else:
        config = {"loss_type": list(options.loss_type), "loss_weights": list(options.loss_weights)}
    trl_losses, trl_params = _train(tmp_path / "trl", options.trainer, {**config, "beta": beta})
    our_losses, our_params = _train(tmp_path / "ours", "DPO", {"beta": beta}, loss=code)
    assert our_losses == pytest.approx(trl_losses, abs=1e-5)
    assert max_param_diff(trl_params, our_params) < 1e-5
    # the comparison can fail: the same trainer without the NLL term trains differently
    other = {**config, "cpo_alpha": 0.0} if options.trainer == "CPO" else {"loss_type": "sigmoid"}
    plain, _ = _train(tmp_path / "plain", options.trainer, {**other, "beta": beta})
    assert plain != pytest.approx(trl_losses, abs=1e-4)


def test_export_names_the_cpo_trainer(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"training": {"beta": 2.0}}))
    arch = Archive(run / "archive.sqlite")
    code = simpo_nll(0.7, 0.5)
    row_id = arch.add(Candidate(name="simpo_nll", code=code, proposer="evolution"), generation=1)
    arch.finish(row_id, "scored", fitness=0.8, metrics={"checks": report(code, 2.0), "learning_rate": 2e-5})
    text = export_candidate(arch, row_id)
    arch.close()
    assert "from trl.experimental.cpo import CPOConfig, CPOTrainer" in text
    assert ('args = CPOConfig(output_dir="out", loss_type=\'simpo\', cpo_alpha=0.5, simpo_gamma=0.7, beta=2.0, '
            "learning_rate=2e-05)") in text
    assert "DiscoveredLossDPOTrainer" in text  # the trainer-subclass form is still shown


def test_the_declared_inputs_narrow_the_search() -> None:
    """A four-input loss is matched without the v2 terms (its gradients cannot depend on lengths); a v2 loss's
    declared inputs keep them."""
    rpo = reference_candidate("rpo", constants={"ALPHA": 0.25}).code
    checks = report(rpo, 0.5)
    assert match_trl(checks, V1_INPUTS) is None  # told (wrongly) it is a v1 loss: sft is not tried
    assert match_trl(checks, signature_inputs(rpo)) == match_trl(checks)
    dpo = reference_candidate("dpo").code
    assert match_trl(report(dpo, 0.5), signature_inputs(dpo)).loss_type == ("sigmoid",)
