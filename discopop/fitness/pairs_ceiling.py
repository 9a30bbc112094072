"""What the preference pairs alone can reach on a diagnostic world: a Bradley-Terry model, then its exact policy.

Why: a search is only worth running where a better loss exists. On the bandit (``tasks.diagnostic``) the reward of
every action is known, but a loss sees only one seed's pairs; a setting can leave the best reference far below
the policy fitted to the *true* reward and still give a search nothing to find, because the pairs do not carry
that information (``narrow_support``, docs/results.md §0). This module computes one thing any loss could in
principle reach from the same pairs, so "the best reference is below it by several MDE" is proof of headroom:

1. ``bt_logits``: a Bradley-Terry model linear in the context features, ``P(chosen > rejected) = sigmoid(f @
   (M[:, c] - M[:, r]))``, fitted to a seed's pairs by L2-penalised logistic regression, in logit units (the label
   temperature is not used: the pairs do not state it);
2. the policy ``W = scale * M / beta``, inside the losses' own class (``log_softmax(ref + f @ W)``). At scale 1 it
   is DPO's converged solution, and where ``kl_coef = beta * T`` the exact maximiser of ``E[r_hat] - kl_coef * KL``
   on every context at once (the KL-regularised optimum ``pi_ref * exp(r_hat / kl_coef)`` is in the class);
3. ``(penalty, scale)`` chosen as a run chooses a loss's rate: the best mean fitness of the tuning seeds' fits on
   the search contexts (``choose``), then applied to other seeds.

It reads the world's pairs and search-context scores only, never the true reward of the confirming contexts, and it
runs no candidate code (nothing here is a loss).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from discopop.tasks.diagnostic import DTYPE, DiagnosticSetting, exact_scores, pairs, split_contexts, world

PENALTIES = (1e-4, 1e-3, 1e-2)  # L2 of the logistic regression (per mean pair loss)
SCALES = tuple(2.0 ** (k / 2) for k in range(-6, 5))  # 1/8 .. 4, a factor sqrt(2) apart


@dataclass(frozen=True)
class PipelineChoice:
    """The pipeline's setting, chosen on tuning seeds, and whether it sits on the grid's edge."""

    penalty: float
    scale: float
    search_fitness: float  # the mean fitness that chose it (tuning seeds, search contexts)

    @property
    def at_edge(self) -> bool:
        return self.scale in (SCALES[0], SCALES[-1])


def bt_logits(s: DiagnosticSetting, seed: int, penalty: float) -> torch.Tensor:
    """``M`` [features, actions] of a Bradley-Terry model fitted to ``seed``'s pairs (L-BFGS, deterministic)."""
    w, data = world(s), pairs(s, seed)
    feats = w.train_features[data.context]
    m = torch.zeros(s.features, s.actions, dtype=DTYPE, requires_grad=True)
    opt = torch.optim.LBFGS([m], lr=1.0, max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = feats @ m
        margin = (logits.gather(1, data.chosen[:, None]) - logits.gather(1, data.rejected[:, None])).squeeze(1)
        loss = torch.nn.functional.softplus(-margin).mean() + penalty * (m ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return m.detach()


def policy(s: DiagnosticSetting, logits: torch.Tensor, scale: float) -> torch.Tensor:
    """The policy's ``W`` for a fitted ``M``: ``scale * M / beta`` (scale 1: DPO's converged solution)."""
    return scale * logits / s.beta


def per_context(s: DiagnosticSetting, weights: torch.Tensor, split: str) -> np.ndarray:
    """Exact per-context fitness (reward - kl_coef * KL) of the policy ``W`` on the held-out contexts of ``split``."""
    w, part = world(s), split_contexts(s, split)
    r, kl = exact_scores(w.eval_features[part], w.eval_ref[part], w.eval_reward[part], weights)
    return (r - s.kl_coef * kl).numpy()


def choose(s: DiagnosticSetting, tuning: Sequence[int], penalties: Sequence[float] = PENALTIES,
           scales: Sequence[float] = SCALES) -> PipelineChoice:
    """The ``(penalty, scale)`` whose policies score best on the search contexts, averaged over ``tuning`` seeds."""
    fits = {(seed, pen): bt_logits(s, seed, pen) for seed in tuning for pen in penalties}
    grid = {(pen, c): float(np.mean([per_context(s, policy(s, fits[seed, pen], c), "search").mean()
                                     for seed in tuning]))
            for pen, c in itertools.product(penalties, scales)}
    pen, c = max(grid, key=grid.get)
    return PipelineChoice(pen, c, grid[pen, c])


def confirm_scores(s: DiagnosticSetting, choice: PipelineChoice, seeds: Sequence[int]) -> np.ndarray:
    """Seeds x confirming contexts: the pipeline at ``choice`` fitted to each seed's pairs."""
    return np.stack([per_context(s, policy(s, bt_logits(s, seed, choice.penalty), choice.scale), "confirm")
                     for seed in seeds])
