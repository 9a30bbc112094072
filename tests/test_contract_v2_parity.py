"""The contract-v2 references against TRL's own code, through ``DiscoveredLossDPOTrainer._compute_loss``.

Both trainers are fed the same stand-in forward pass (per-token log-probs spread over answers of *unequal*
lengths, ``tests/trl_losses.py``'s idea), so the comparison also covers how our trainer derives the v2 inputs from
TRL's batch: token counts from the completion mask, the chosen NLL from the per-token log-probs. TRL's side:
``DPOTrainer._compute_loss`` for ``sigmoid_norm``, ``ipo`` (length-normalised: our ``ipo_norm``) and RPO
(``["sigmoid", "sft"]``); ``CPOTrainer.cpo_loss`` (``simpo``, and at ``alpha`` != 0 its AlphaPO) and
``ORPOTrainer.odds_ratio_loss`` on the average log-probs those trainers compute, plus the batch's token-mean NLL for
ORPO. Float64, loss and gradients with respect to all four log-prob inputs within 1e-6.
"""

from __future__ import annotations

import tempfile
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from datasets.utils.logging import disable_progress_bar
from trl import DPOConfig, DPOTrainer
from trl.experimental.cpo import CPOTrainer
from trl.experimental.orpo import ORPOTrainer
from trl_losses import StandIn, trl_trainer

from discopop.dpo_trainer import DiscoveredLossDPOTrainer
from discopop.proposers.reference import reference_candidate
from discopop.tasks.tiny import tiny_causal_lm

BETA = 0.3
BATCH = 12
TOL = 1e-6


def case(seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Float64 leaves (policy chosen, rejected, reference chosen, rejected) and [2B] completion lengths (1..6)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 7, (2 * BATCH,), generator=gen)
    ref = -torch.rand(2, BATCH, generator=gen, dtype=torch.float64) * 3.0 * lengths.view(2, BATCH) - 0.5
    pol = ref + torch.randn(2, BATCH, generator=gen, dtype=torch.float64)
    pol = torch.minimum(pol, torch.full_like(pol, -0.05))  # log-probs of real answers are below 0
    return [t.clone().requires_grad_(True) for t in (pol[0], pol[1], ref[0], ref[1])], lengths


def batch(leaves: list[torch.Tensor], lengths: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token log-probs (each answer's summed log-prob spread evenly over its tokens, 0 on padding) and the
    collated batch TRL's ``_compute_loss`` reads (one prompt token, then the completion, then padding)."""
    width = int(lengths.max())
    summed = torch.cat([leaves[0], leaves[1]])
    positions = torch.arange(width).unsqueeze(0)
    mask = (positions < lengths.unsqueeze(1)).to(torch.float64)
    per_token = (summed / lengths.to(torch.float64)).unsqueeze(1) * mask
    completion = torch.zeros(2 * BATCH, width + 1, dtype=torch.long)
    completion[:, 1:] = mask.long()
    ids = torch.zeros_like(completion)
    return per_token, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": completion,
                       "ref_chosen_logps": leaves[2], "ref_rejected_logps": leaves[3]}


@pytest.fixture(scope="module")
def ours() -> DiscoveredLossDPOTrainer:
    return our_trainer()


def our_trainer() -> DiscoveredLossDPOTrainer:
    """Our trainer on a tiny model with precomputed references (read from the batch, as TRL's are here)."""
    disable_progress_bar()
    model, tokenizer = tiny_causal_lm()
    data = Dataset.from_list([{"prompt": "1+2=", "chosen": "3", "rejected": "4"}])
    args = DPOConfig(output_dir=tempfile.mkdtemp(prefix="v2_parity_"), report_to=[], use_cpu=True, bf16=False,
                     disable_tqdm=True, precompute_ref_log_probs=True, beta=BETA)
    return DiscoveredLossDPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                                    loss_fn="dpo")


def our_loss(trainer: DiscoveredLossDPOTrainer, name: str, leaves, lengths, **constants: float) -> torch.Tensor:
    trainer.reset_for_new_loss(reference_candidate(name, constants=constants or None).code, seed=0)
    per_token, inputs = batch(leaves, lengths)
    return trainer._compute_loss(StandIn(per_token), inputs, return_outputs=False)


def trl_dpo_loss(leaves, lengths, **config: Any) -> torch.Tensor:
    per_token, inputs = batch(leaves, lengths)
    return trl_trainer(BETA, **config)._compute_loss(StandIn(per_token), inputs, return_outputs=False)


def averages(leaves, lengths) -> tuple[torch.Tensor, torch.Tensor]:
    """The average per-token log-probs CPO and ORPO compute (``average_log_prob=True``)."""
    chosen_len, rejected_len = lengths.to(torch.float64).chunk(2)
    return leaves[0] / chosen_len, leaves[1] / rejected_len


def token_mean_nll(leaves, lengths) -> torch.Tensor:
    """The chosen answers' NLL averaged over all their tokens (TRL's ``sft`` term)."""
    return -leaves[0].sum() / lengths.chunk(2)[0].sum()


def trl_simpo(leaves, lengths, gamma: float = 0.5, alpha: float = 0.0) -> torch.Tensor:
    """CPO's SimPO; at ``alpha`` != 0 its AlphaPO (``CPOConfig(loss_type="alphapo")`` is simpo, cpo_alpha 0)."""
    cpo = SimpleNamespace(alpha=alpha, loss_type="simpo", simpo_gamma=gamma, beta=BETA, label_smoothing=0.0,
                          accelerator=SimpleNamespace(device="cpu"))
    losses, _, _ = CPOTrainer.cpo_loss(cpo, *averages(leaves, lengths))
    return losses.mean()  # cpo_alpha = 0: SimPO


def trl_orpo(leaves, lengths) -> torch.Tensor:
    orpo = SimpleNamespace(beta=BETA, accelerator=SimpleNamespace(device="cpu"))
    losses = ORPOTrainer.odds_ratio_loss(orpo, *averages(leaves, lengths))[0]
    return token_mean_nll(leaves, lengths) - losses.mean()  # ORPOTrainer: policy_nll_loss - losses.mean()


CASES = {
    "simpo": (lambda lv, ln: trl_simpo(lv, ln), {}),
    "simpo (gamma=1.5)": (lambda lv, ln: trl_simpo(lv, ln, gamma=1.5), {"GAMMA": 1.5}),
    "alphapo": (lambda lv, ln: trl_simpo(lv, ln, alpha=0.25), {}),
    "alphapo (alpha=0.1, gamma=1)": (lambda lv, ln: trl_simpo(lv, ln, gamma=1.0, alpha=0.1),
                                     {"ALPHA": 0.1, "GAMMA": 1.0}),
    "orpo": (trl_orpo, {}),
    "rpo": (lambda lv, ln: trl_dpo_loss(lv, ln, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0]), {}),
    "rpo (alpha=0.25)": (lambda lv, ln: trl_dpo_loss(lv, ln, loss_type=["sigmoid", "sft"],
                                                     loss_weights=[1.0, 0.25]), {"ALPHA": 0.25}),
    "sigmoid_norm": (lambda lv, ln: trl_dpo_loss(lv, ln, loss_type="sigmoid_norm"), {}),
    "ipo_norm": (lambda lv, ln: trl_dpo_loss(lv, ln, loss_type="ipo"), {}),
}


def compare(ours: DiscoveredLossDPOTrainer, label: str, seed: int = 0) -> tuple[float, float, float]:
    """(|loss TRL - loss ours|, max |grad TRL - grad ours| over the four inputs, max |grad TRL|)."""
    theirs_fn, constants = CASES[label]
    leaves, lengths = case(seed)
    theirs = theirs_fn(leaves, lengths)
    their_grads = torch.autograd.grad(theirs, leaves, allow_unused=True)
    mine = our_loss(ours, label.split(" ")[0], leaves, lengths, **constants)
    my_grads = torch.autograd.grad(mine, leaves, allow_unused=True)
    zero = torch.zeros(BATCH, dtype=torch.float64)
    pairs = [(zero if a is None else a, zero if b is None else b) for a, b in zip(their_grads, my_grads, strict=True)]
    return (float((theirs - mine).detach().abs()), max(float((a - b).abs().max()) for a, b in pairs),
            max(float(a.abs().max()) for a, _ in pairs))


@pytest.mark.parametrize("label", list(CASES))
def test_v2_references_equal_trls_loss_and_gradients(ours: DiscoveredLossDPOTrainer, label: str) -> None:
    dloss, dgrad, scale = compare(ours, label)
    assert scale > 1e-3, "TRL's gradient is ~0 here: the comparison would prove nothing"
    assert dloss < TOL and dgrad < TOL, f"{label}: |dloss| {dloss:.2e}, |dgrad| {dgrad:.2e}"


def test_the_comparison_sees_the_lengths(ours: DiscoveredLossDPOTrainer) -> None:
    """With the completion lengths ignored (every answer one token), sigmoid_norm is plain DPO and differs."""
    leaves, lengths = case(0)
    theirs = trl_dpo_loss(leaves, lengths, loss_type="sigmoid_norm")
    plain = -F.logsigmoid(BETA * ((leaves[0] - leaves[2]) - (leaves[1] - leaves[3]))).mean()
    assert abs(float(theirs - plain)) > 1e-3
    assert abs(float(theirs - our_loss(ours, "sigmoid_norm", leaves, lengths))) < TOL


def test_a_reference_free_loss_skips_the_reference_forward() -> None:
    """Without precomputed reference log-probs, SimPO trains with no reference forward at all; DPO needs one."""
    disable_progress_bar()
    model, tokenizer = tiny_causal_lm()
    data = Dataset.from_list([{"prompt": "1+2=", "chosen": "3", "rejected": "4"}])
    args = DPOConfig(output_dir=tempfile.mkdtemp(prefix="v2_reffree_"), report_to=[], use_cpu=True, bf16=False,
                     disable_tqdm=True, beta=BETA)
    trainer = DiscoveredLossDPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                                       ref_model=tiny_causal_lm()[0], loss_fn="simpo")
    calls: list[int] = []
    trainer.compute_ref_log_probs = lambda *a, **k: calls.append(1) or (_ for _ in ()).throw(AssertionError("ref"))
    leaves, lengths = case(1)
    per_token, inputs = batch(leaves, lengths)
    loss = trainer._compute_loss(StandIn(per_token), inputs, return_outputs=False)
    assert torch.isfinite(loss) and not calls
    assert abs(float(loss - trl_simpo(leaves, lengths))) < TOL
    trainer.reset_for_new_loss("dpo", seed=0)
    with pytest.raises(AssertionError, match="ref"):
        trainer._compute_loss(StandIn(per_token), inputs, return_outputs=False)
    assert calls == [1]


def test_the_trl_trainer_class_is_dpo_for_the_harness() -> None:
    assert issubclass(DiscoveredLossDPOTrainer, DPOTrainer)
