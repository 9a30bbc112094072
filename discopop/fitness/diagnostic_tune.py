"""Fine-tune on a diagnostic task (``discopop.tasks.diagnostic``) and score it exactly.

The loss is called in the contract form ``loss_fn(pc, pr, rc, rr, beta)`` on 1-D float64 tensors and its
per-example output is averaged, as ``DiscoveredLossDPOTrainer`` does; so a
:class:`~discopop.sandbox.remote_loss.RemoteLoss` (values and gradients from the sandboxed oracle) takes the same
autograd path here as in a real fine-tune. Only the policy log-probs carry gradients; the reference
log-probs are constants, as TRL's precomputed ones are.

Common random numbers: the initial policy is the reference for every loss and seed, and a seed fixes the
pairs and the minibatch order (:func:`batch_order`), so at a given seed two losses differ only by their
loss. A run is deterministic: the same loss, setting and seed give bit-identical results.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from discopop.tasks.diagnostic import DTYPE, DiagnosticSetting, exact_scores, pairs, world

LossFn = Callable[..., torch.Tensor]


class DiagnosticFailure(RuntimeError):
    """The loss broke the run: a wrong output shape, or a non-finite loss or policy."""


@dataclass
class DiagnosticResult:
    """Exact scores of the trained policy on the held-out contexts (and a few training-side numbers)."""

    fitness: float  # mean over held-out contexts of reward - kl_coef * KL
    reward: float
    kl: float
    per_context: list[float]  # fitness per held-out context, in a fixed order (for paired statistics)
    per_context_reward: list[float]
    per_context_kl: list[float]
    reference_reward: float  # the untrained policy's (= pi_ref's) reward on the same contexts
    train_reward: float  # on the training contexts
    train_kl: float
    final_loss: float
    steps: int
    losses: list[float] = field(default_factory=list)  # mean loss per step
    weights: torch.Tensor | None = None  # the trained policy's W [features, actions] (the policy is the reference's
    # logits + features @ W)


def batch_order(total: int, batch: int, steps: int, seed: int) -> torch.Tensor:
    """[steps, batch] pair indices: consecutive seeded epochs (each a permutation), cut into batches."""
    gen = torch.Generator().manual_seed(7919 * int(seed) + 3)
    batch = min(batch, total)
    epochs = math.ceil(steps * batch / total)
    flat = torch.cat([torch.randperm(total, generator=gen) for _ in range(epochs)])
    return flat[: steps * batch].view(steps, batch)


def fine_tune(loss_fn: LossFn, setting: DiagnosticSetting, *, seed: int, lr: float, beta: float | None = None,
              steps: int | None = None, batch: int | None = None) -> DiagnosticResult:
    """Train the policy from the reference with Adam on ``loss_fn`` and return its exact scores.

    ``beta``, ``steps`` and ``batch`` default to the setting's. Raises :class:`DiagnosticFailure` for a
    loss the run cannot continue with (the caller decides what a failed candidate scores).
    """
    s = setting
    beta = float(s.beta if beta is None else beta)
    steps = int(s.steps if steps is None else steps)
    w, data = world(s), pairs(s, seed)
    order = batch_order(len(data.context), int(s.batch if batch is None else batch), steps, seed)
    feats, ref = w.train_features[data.context], w.train_ref[data.context]
    ref_chosen = ref.gather(1, data.chosen[:, None]).squeeze(1)
    ref_rejected = ref.gather(1, data.rejected[:, None]).squeeze(1)
    weights = torch.zeros(s.features, s.actions, dtype=DTYPE, requires_grad=True)
    optimiser = torch.optim.Adam([weights], lr=float(lr))
    losses: list[torch.Tensor] = []
    for step, idx in enumerate(order):
        logp = torch.log_softmax(ref[idx] + feats[idx] @ weights, dim=1)
        chosen = logp.gather(1, data.chosen[idx, None]).squeeze(1)
        rejected = logp.gather(1, data.rejected[idx, None]).squeeze(1)
        per_example = loss_fn(chosen, rejected, ref_chosen[idx], ref_rejected[idx], beta)
        if not isinstance(per_example, torch.Tensor) or per_example.shape != chosen.shape:
            shape = list(per_example.shape) if isinstance(per_example, torch.Tensor) else type(per_example).__name__
            raise DiagnosticFailure(f"loss returned {shape}, expected a tensor of shape {list(chosen.shape)}")
        loss = per_example.mean()
        if not torch.isfinite(loss):
            raise DiagnosticFailure(f"non-finite loss at step {step + 1}")
        optimiser.zero_grad(set_to_none=True)
        if loss.requires_grad:  # a loss that ignores the policy trains nothing (Adam skips a missing grad)
            loss.backward()
        optimiser.step()
        losses.append(loss.detach())
    weights = weights.detach()
    if not torch.isfinite(weights).all():
        raise DiagnosticFailure("the policy's parameters became non-finite")
    reward, kl = exact_scores(w.eval_features, w.eval_ref, w.eval_reward, weights)
    train_reward, train_kl = exact_scores(w.train_features, w.train_ref, w.train_reward, weights)
    per_context = reward - s.kl_coef * kl
    curve = torch.stack(losses).double().tolist() if losses else []
    return DiagnosticResult(
        fitness=float(per_context.mean()), reward=float(reward.mean()), kl=float(kl.mean()),
        per_context=per_context.tolist(), per_context_reward=reward.tolist(), per_context_kl=kl.tolist(),
        reference_reward=float((w.eval_ref.exp() * w.eval_reward).sum(dim=1).mean()),
        train_reward=float(train_reward.mean()), train_kl=float(train_kl.mean()),
        final_loss=curve[-1] if curve else math.nan, steps=steps, losses=curve, weights=weights,
    )
