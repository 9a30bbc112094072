"""TRL's own loss code evaluated on given log-probs, for the parity of proposals/ with TRL's ``loss_type`` catalogue.

TRL 1.16 computes its losses inside ``DPOTrainer._compute_loss``, after the model's forward pass: there is no
function of the four log-probs to call. So a real ``DPOTrainer`` is built from a ``DPOConfig`` (a tiny model, a
one-row dataset, ``precompute_ref_log_probs=True`` so the reference log-probs are read from the batch and keep
their gradients; the config's own checks run, e.g. exo_pair refusing ``label_smoothing=0``), and its
``_compute_loss`` is called with a stand-in model whose per-token log-probs are the given policy log-probs spread
evenly over ``tokens`` completion tokens. Everything after the forward pass is TRL's code, unchanged: the loss,
its gradients with respect to all four inputs, and the length normalisation of ``ipo``/``sigmoid_norm``.

Used by tests/test_trl_loss_parity.py and benchmarks/trl_loss_parity.py.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from datasets import Dataset
from datasets.utils.logging import disable_progress_bar
from trl import DPOConfig, DPOTrainer

from discopop.contract.losses import load_loss
from discopop.proposers.reference import reference_candidate
from discopop.tasks.tiny import tiny_causal_lm

BETA = 0.3
BATCH = 16


@dataclass(frozen=True)
class Case:
    """One TRL configuration and the proposals/ file (at some constants) that should compute the same loss.

    ``tokens``: completion length L of every answer (TRL's ipo and sigmoid_norm divide log-ratios by it). Ours
    runs at ``beta * beta_scale`` and ``loss_scale`` times our loss is TRL's (1 and 1 where the two are the same
    loss; the length-normalised rows map TRL's per-token loss onto our summed one).
    """

    label: str
    trl: dict[str, Any]  # DPOConfig fields: loss_type, loss_weights, label_smoothing, discopop_tau
    reference: str
    constants: dict[str, float] = field(default_factory=dict)
    flip_rate: float | None = None
    tokens: int = 1
    beta_scale: float = 1.0
    loss_scale: float = 1.0
    note: str = "exact"


L = 3
CASES = [
    Case("sigmoid", {"loss_type": "sigmoid"}, "dpo"),
    Case("hinge", {"loss_type": "hinge"}, "hinge"),
    Case("ipo (L=1)", {"loss_type": "ipo"}, "ipo", note="exact at one token"),
    Case(f"ipo (L={L})", {"loss_type": "ipo"}, "ipo", tokens=L, beta_scale=1 / L, loss_scale=1 / L**2,
         note="ours at beta/L, x 1/L^2"),
    Case(f"sigmoid_norm (L={L})", {"loss_type": "sigmoid_norm"}, "dpo", tokens=L, beta_scale=1 / L,
         note="dpo at beta/L"),
    Case("robust (eps=0.1)", {"loss_type": "robust", "label_smoothing": 0.1}, "rdpo", flip_rate=0.1),
    Case("robust (eps=0.3)", {"loss_type": "robust", "label_smoothing": 0.3}, "rdpo", flip_rate=0.3),
    Case("sigmoid+robust (cDPO eps=0.1)", {"loss_type": ["sigmoid", "robust"], "loss_weights": [1.8, -0.8],
                                           "label_smoothing": 0.1}, "cdpo", flip_rate=0.1),
    Case("exo_pair (eps=1e-3)", {"loss_type": "exo_pair", "label_smoothing": 1e-3}, "exo_pair"),
    Case("exo_pair (eps=3e-3)", {"loss_type": "exo_pair", "label_smoothing": 3e-3}, "exo_pair",
         constants={"EPSILON": 3e-3}),
    Case("nca_pair", {"loss_type": "nca_pair"}, "nca_pair"),
    Case("bco_pair", {"loss_type": "bco_pair"}, "bco_pair"),
    Case("sppo_hard", {"loss_type": "sppo_hard"}, "sppo_hard"),
    Case("apo_zero", {"loss_type": "apo_zero"}, "apo_zero"),
    Case("apo_down", {"loss_type": "apo_down"}, "apo_down"),
    Case("aot (eps=0)", {"loss_type": "aot"}, "aot"),
    Case("aot (eps=0.1)", {"loss_type": "aot", "label_smoothing": 0.1}, "aot", flip_rate=0.1),
    Case("aot_unpaired (eps=0)", {"loss_type": "aot_unpaired"}, "aot_unpaired"),
    Case("aot_unpaired (eps=0.1)", {"loss_type": "aot_unpaired", "label_smoothing": 0.1}, "aot_unpaired",
         flip_rate=0.1),
    Case("discopop (tau=0.05)", {"loss_type": "discopop", "discopop_tau": 0.05}, "lrml"),
    Case("discopop (tau=0.15)", {"loss_type": "discopop", "discopop_tau": 0.15}, "lrml", constants={"TAU": 0.15}),
]
# What is not compared, and why (for the closing note; see also each file's docstring):
NOT_COMPARED = {
    "sft": "needs the chosen answer's token NLL: not a function of the four sequence log-probs (contract v2)",
    "kto_pair.py": "no TRL 1.16 counterpart (TRL <= 0.9's kto_pair; TRL's bco_pair is a different formula)",
}


class StandIn(torch.nn.Module):
    """The policy's forward pass, reduced to what ``_compute_loss`` reads: per-token log-probs (and metrics)."""

    def __init__(self, per_token: torch.Tensor):
        super().__init__()
        self.per_token = per_token

    def forward(self, **_: Any) -> SimpleNamespace:
        zeros = torch.zeros_like(self.per_token.detach())
        return SimpleNamespace(log_probs=self.per_token, entropy=zeros, mean_logits=zeros,
                               is_top1=torch.zeros(zeros.shape, dtype=torch.bool))


def trl_trainer(beta: float, **config: Any) -> DPOTrainer:
    """A real ``DPOTrainer`` for ``config`` on a tiny model and one pair (its constructor runs all its checks)."""
    disable_progress_bar()
    model, tokenizer = tiny_causal_lm()
    data = Dataset.from_list([{"prompt": "1+2=", "chosen": "3", "rejected": "4"}])
    args = DPOConfig(output_dir=tempfile.mkdtemp(prefix="trl_losses_"), report_to=[], use_cpu=True, bf16=False,
                     disable_tqdm=True, precompute_ref_log_probs=True, beta=beta, **config)
    return DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)


def trl_loss(trainer: DPOTrainer, inputs: tuple[torch.Tensor, ...], tokens: int = 1) -> torch.Tensor:
    """TRL's batch loss for (policy_chosen, policy_rejected, ref_chosen, ref_rejected), each answer ``tokens``
    completion tokens long, differentiable with respect to all four."""
    chosen, rejected, ref_chosen, ref_rejected = inputs
    batch = chosen.shape[0]
    per_token = (torch.cat([chosen, rejected]) / tokens).unsqueeze(1).expand(-1, tokens)
    ids = torch.zeros(2 * batch, tokens + 1, dtype=torch.long)
    completion = torch.ones_like(ids)
    completion[:, 0] = 0  # a one-token prompt
    batch_inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": completion,
                    "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    return trainer._compute_loss(StandIn(per_token), batch_inputs, return_outputs=False)


def parity_inputs(seed: int = 0, batch: int = BATCH) -> tuple[torch.Tensor, ...]:
    """Float64 log-probs as training sees them: sequences of tens of nats, log-ratios of a few (beta * rho up to
    about +-3 at BETA), all distinct (AOT's sort then has one answer)."""
    gen = torch.Generator().manual_seed(seed)
    ref = -torch.rand(2, batch, generator=gen, dtype=torch.float64) * 40.0 - 2.0
    pol = ref + torch.randn(2, batch, generator=gen, dtype=torch.float64) * 4.0
    return pol[0], pol[1], ref[0], ref[1]


def our_loss(case: Case):
    """The proposals/ file of ``case`` at its constants, loaded in process (a trusted reference file)."""
    cand = reference_candidate(case.reference, case.flip_rate, constants=case.constants or None)
    return load_loss(cand.code)


def compare(case: Case, trainer: DPOTrainer, seed: int = 0, beta: float = BETA) -> tuple[float, float, float]:
    """(max |loss TRL - loss ours|, max |grad TRL - grad ours| over the four inputs, max |grad TRL|)."""
    leaves = [t.clone().requires_grad_(True) for t in parity_inputs(seed)]
    theirs = trl_loss(trainer, tuple(leaves), case.tokens)
    their_grads = torch.autograd.grad(theirs, leaves)
    ours = our_loss(case)(*leaves, beta * case.beta_scale).mean() * case.loss_scale
    our_grads = torch.autograd.grad(ours, leaves)
    dloss = float((theirs - ours).detach().abs())
    dgrad = max(float((a - b).abs().max()) for a, b in zip(their_grads, our_grads, strict=True))
    return dloss, dgrad, max(float(g.abs().max()) for g in their_grads)
