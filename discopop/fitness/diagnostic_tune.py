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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from discopop.config import DiagnosticTaskSettings, TrainingSettings, plain
from discopop.contract.inputs import call_loss, declared_inputs, needs_lengths
from discopop.tasks.diagnostic import DTYPE, DiagnosticSetting, exact_scores, pairs, world
from discopop.tasks.worlds import mean, per_context_mean, settings_of, split_parts

LossFn = Callable[..., torch.Tensor]

# A grid-point job's tuning seeds (``training.tune_seeds``) are its seed + 2000 + i: never the ranking seed itself,
# nor a race seed (seed + 500 + i, ``search.seed_race.RACE_SEED_OFFSET``, fewer than 1,500 of them), nor a fresh
# confirmation seed (seed + 1000 + i, ``search.confirmation.SEED_OFFSET``, fewer than 1,000), so the data that
# chooses the rate is neither the data that ranks the row nor the data that confirms it.
TUNE_SEED_OFFSET = 2000


def tuning_seeds(seed: int, count: int) -> list[int]:
    """The ``count`` seeds a grid-point job at ``seed`` chooses its rate on (module constant: the rule)."""
    return [int(seed) + TUNE_SEED_OFFSET + i for i in range(int(count))]


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


def _loss_inputs(lengths: bool, chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor,
                 ref_rejected: torch.Tensor) -> dict[str, torch.Tensor]:
    """What a loss may declare (``contract.inputs``) on the bandit: an answer is one action, so its length is 1 and
    the chosen NLL is minus the chosen action's log-prob (differentiable)."""
    available = {"policy_chosen_logps": chosen, "policy_rejected_logps": rejected,
                 "reference_chosen_logps": ref_chosen, "reference_rejected_logps": ref_rejected}
    if lengths:
        ones = torch.ones_like(chosen.detach())
        available.update({"chosen_lengths": ones, "rejected_lengths": ones.clone(), "chosen_nll": -chosen})
    return available


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
    lengths = needs_lengths(declared_inputs(loss_fn))  # a contract-v2 loss's lengths and chosen NLL
    for step, idx in enumerate(order):
        logp = torch.log_softmax(ref[idx] + feats[idx] @ weights, dim=1)
        chosen = logp.gather(1, data.chosen[idx, None]).squeeze(1)
        rejected = logp.gather(1, data.rejected[idx, None]).squeeze(1)
        per_example = call_loss(loss_fn, _loss_inputs(lengths, chosen, rejected, ref_chosen[idx], ref_rejected[idx]),
                                beta)
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


class DiagnosticTuner:
    """A worker's fine-tuner for ``task=diagnostic``, in place of TRL's ``FineTuner`` (no model, no TRL).

    :meth:`run` returns the fields of the worker's ``train`` reply, as ``Worker.train`` builds them from a
    ``FineTuner`` run: the per-prompt lists are per held-out context of the job's split (reward and KL, which
    ``fitness.tuning.split_fitness`` and ``archive.Evaluation.per_prompt_fitness`` combine with ``kl_coef``).
    ``greedy`` is the exact reward of the trained policy's mode, the analogue of a greedy answer's.

    A composite task (``task.preset=a+b``, ``tasks.worlds``) is one fine-tune per world at the job's seed, rate and
    beta; the per-prompt lists are the worlds' own, concatenated in the composite's order, and every figure of the
    reply is over all of them (a single world's reply is the one it always was, bit for bit).
    """

    exact = True  # the worker's cue: this tuner's ``run`` replies in ``train``'s fields (no TRL trainer)
    device = "cpu"
    precision = None
    lora = None

    def __init__(self, task: DiagnosticTaskSettings, training: TrainingSettings, kl_coef: float) -> None:
        self.settings = settings_of({**plain(task), "kl_coef": float(kl_coef)})
        self.setting = self.settings[0]  # the first world: the only one unless task.preset is a composite
        self.kl_coef = float(kl_coef)
        self.beta = float(training.beta or self.setting.beta)
        self.learning_rate = float(training.learning_rate or 0.03)
        # One step with a built-in loss, before the worker seals itself and snapshots its state: it builds the world
        # and makes the lazy imports a first fine-tune would (Adam's first step imports torch._dynamo, which rebinds
        # torch.manual_seed: after the snapshot the state watch would call that a patched namespace).
        for s in self.settings:
            fine_tune(_logistic, s, seed=0, lr=self.learning_rate, beta=self.beta, steps=1)

    def run(self, loss_fn: LossFn, *, seed: int, split: str = "search", learning_rate: float | None = None,
            beta: float | None = None, tune_seeds: int = 0) -> dict[str, Any]:
        """One fine-tune from the reference at ``learning_rate`` (and ``beta``, default the run's) per world and the
        exact scores on ``split``'s contexts.

        ``tune_seeds`` = k > 0 (a grid-point job of the tuning protocol): k more fine-tunes (per world) on
        :func:`tuning_seeds` of ``seed``, whose mean fitness on every context of ``split`` is the reply's
        ``tune_fitness`` (what chooses the rate; the per-prompt lists stay ``seed``'s, which rank the row).
        """
        lr = float(self.learning_rate if learning_rate is None else learning_rate)
        run_beta = float(self.beta if beta is None else beta)
        started = time.perf_counter()
        results = [fine_tune(loss_fn, s, seed=seed, lr=lr, beta=run_beta) for s in self.settings]
        parts = split_parts(self.settings, split)
        tuned = [per_context_mean([fine_tune(loss_fn, s, seed=t, lr=lr, beta=run_beta).per_context
                                   for s in self.settings], parts)
                 for t in tuning_seeds(seed, tune_seeds)]
        trained = time.perf_counter() - started
        reward = per_context_mean([r.per_context_reward for r in results], parts)
        kl = per_context_mean([r.per_context_kl for r in results], parts)
        modes = [_greedy(s, r, part) for s, r, part in zip(self.settings, results, parts, strict=True)]
        greedy = modes[0] if len(modes) == 1 else torch.stack(modes).mean(dim=0)  # a context: its mean over worlds
        means = sum(reward) / len(reward), sum(kl) / len(kl)
        return {
            "fitness": means[0] - self.kl_coef * means[1], "reward": means[0], "kl": means[1],
            "greedy": float(greedy.mean()), "steps": sum(r.steps for r in results),
            "final_loss": mean([r.final_loss for r in results]),
            "train_seconds": trained, "step_seconds": trained, "score_seconds": 0.0,
            "train_metrics": self._metrics(results, seed, run_beta),
            "per_prompt": reward, "per_prompt_kl": [round(k, 6) for k in kl], "per_prompt_greedy": greedy.tolist(),
            "kl_coef": self.kl_coef, "learning_rate": lr, "peak_gpu_mb": None,
            **({"beta": run_beta} if beta is not None else {}),
            **({"tune_fitness": sum(sum(v) / len(v) for v in tuned) / len(tuned)} if tuned else {}),
        }

    def reference_logps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference log-probs (chosen, rejected) of the training pairs of seed 0, as the loss is fed them (every
        world's, in the composite's order)."""
        chosen, rejected = [], []
        for s in self.settings:
            w, data = world(s), pairs(s, 0)
            ref = w.train_ref[data.context]
            chosen.append(ref.gather(1, data.chosen[:, None]).squeeze(1))
            rejected.append(ref.gather(1, data.rejected[:, None]).squeeze(1))
        return torch.cat(chosen), torch.cat(rejected)

    def _metrics(self, results: list[DiagnosticResult], seed: int, beta: float) -> dict[str, float]:
        """What a TRL run logs that a proposer reflects on: the loss curve in thirds and the margins |beta*rho| the
        loss ended up using (on every pair of the seed, with the trained policy), plus the training-side scores; for a
        composite, each third and score the mean over its worlds and the margins over all of their pairs."""
        out: dict[str, float] = {"train_reward": round(mean([r.train_reward for r in results]), 5),
                                 "train_kl": round(mean([r.train_kl for r in results]), 5)}
        thirds: dict[str, list[float]] = {}
        for curve in (r.losses for r in results):
            if curve:
                n, k = len(curve), max(1, len(curve) // 3)
                mid = (n - k) // 2
                for key, part in (("loss_start", curve[:k]), ("loss_mid", curve[mid:mid + k]),
                                  ("loss_end", curve[n - k:])):
                    thirds.setdefault(key, []).append(sum(part) / len(part))
        out.update({key: round(mean(values), 5) for key, values in thirds.items()})
        rhos = []
        for s, result in zip(self.settings, results, strict=True):
            w, data = world(s), pairs(s, seed)
            logp = torch.log_softmax(w.train_ref[data.context] + w.train_features[data.context] @ result.weights,
                                     dim=1)
            ref = w.train_ref[data.context]
            rhos.append(((logp - ref).gather(1, data.chosen[:, None])
                         - (logp - ref).gather(1, data.rejected[:, None])).squeeze(1))
        rho = torch.cat(rhos)
        margin = (beta * rho).abs()
        for q in (0.1, 0.5, 0.9):
            out[f"margin_abs_q{int(q * 100)}"] = round(float(torch.quantile(margin, q)), 4)
        out["rewards/accuracies"] = round(float((rho > 0).double().mean()), 4)
        return out


def _greedy(s: DiagnosticSetting, result: DiagnosticResult, part: slice) -> torch.Tensor:
    """Per context of ``part``: the exact reward of the trained policy's mode (its "greedy answer")."""
    w = world(s)
    mode = (w.eval_ref + w.eval_features @ result.weights).argmax(dim=1, keepdim=True)
    return w.eval_reward.gather(1, mode).squeeze(1)[part]


def _logistic(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO's loss, trusted code: only the tuner's warm-up step uses it (candidates' losses run in the oracle)."""
    return -torch.nn.functional.logsigmoid(beta * ((pc - pr) - (rc - rr)))
