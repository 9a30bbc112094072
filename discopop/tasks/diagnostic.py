"""A diagnostic task family: a contextual bandit whose returns are computed exactly, not sampled.

Why: an evaluation on the embedded GPT-2 task is a real fine-tune (seconds, noisy: it resolves nothing
below ~0.02 fitness), too slow and too noisy to develop the search on. Here a "completion" is one
action, so a sequence log-prob is ``log pi(a|x)`` and the four contract arguments are exactly the
policy/reference log-probs of the chosen and rejected actions. Expected reward and KL to the reference
are sums over the action table, so the only noise left is the one we put in: which pairs a seed draws
and their order (in the spirit of Alfano et al. 2025's diagnostic suite; our own construction).

The world (fixed by ``task_seed``, shared by every seed and loss):

* contexts ``x`` with features ``f(x) = [1, g]``, ``g ~ N(0, I)``: ``contexts`` training contexts (the
  pairs are drawn there) and ``eval_contexts`` held-out ones (scored: generalisation, as with held-out
  prompts), plus ``extra_confirm_contexts`` more held-out ones for the confirming half only and
  ``extra_search_contexts`` more for the search half only, each drawn from a stream of its own so that adding
  them changes neither the training side nor the other half;
* a true reward ``r(x, a)``: a linear part ``f(x) . M[:, a]`` plus a share ``reward_noise`` the features
  cannot express, standardised per context (so uniform play scores 0 and the best action ~1.8);
* a reference policy ``softmax(ref_skill * r + b_a + ref_noise * e)``: imperfect, with a per-action
  habit ``b_a`` (like the SFT's habitual mistake), so its mode is often not the best action.

The policy is ``log_softmax(ref_logits(x) + f(x) @ W)`` with ``W`` (features x actions) initialised at 0:
it starts exactly at the reference, shares what it learns across contexts through ``f`` (so held-out
contexts exist and a loss's updates generalise or not in a controlled way), and cannot overfit one
context without moving the others, like a network. A tabular policy would make held-out contexts
meaningless and let every context be fitted independently.

Per seed, ``pairs_per_context`` pairs per training context: each of the two (distinct) actions is drawn
from a policy picked from the mix ``sampler`` (reference, good = softmax(r/T), bad = softmax(-r/T)),
restricted to a per-context subset of ``support`` of the actions, labelled by Bradley-Terry on ``r`` at
``label_temperature`` (0: deterministic, ties at random), then flipped with probability ``label_noise``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from discopop.tasks.base import Task

DTYPE = torch.float64

# The fitness's KL price, in reward units: the objective the preference labels define. Bradley-Terry labels at
# temperature T say P(a > b) = sigmoid((r_a - r_b) / T); DPO at beta fits beta * log(pi / pi_ref) = r / T + c,
# whose policy is the maximiser of E[r] / T - beta * KL, i.e. of E[r] - beta * T * KL. At the tier's default
# beta (0.1) and the world's label temperature (0.5) that is 0.05. Fixed, not per preset or per run beta: the
# presets with deterministic labels (T = 0: ties, deterministic) are the same world labelled without noise, and
# T -> 0 would price KL at 0 and make "drive the rejected actions to 0" the optimum (the drift those presets
# exist to expose); a run that tunes beta (training.beta_grid) must still be scored on one objective.
KL_COEF = 0.05


@dataclass(frozen=True)
class DiagnosticSetting:
    """One diagnostic task: the world, how its preference data is made, and the fine-tune's defaults."""

    name: str = "clean"
    contexts: int = 256  # training contexts (pairs are drawn on them)
    eval_contexts: int = 256  # held-out contexts, scored exactly
    actions: int = 16
    features: int = 8  # per context, including the constant 1
    task_seed: int = 0  # the world: contexts, reward, reference, support
    reward_noise: float = 0.5  # share of the reward's variance the features cannot express
    reward_levels: int = 0  # > 0: reward quantised per context into this many levels (ties)
    ref_skill: float = 1.0  # weight of the true reward in the reference's logits
    ref_habit: float = 1.2  # SD of the per-action bias of the reference (its habitual mistake)
    ref_noise: float = 1.0  # SD of the reference's per-(context, action) noise
    pairs_per_context: int = 4
    sampler: tuple[float, float, float] = (1.0, 0.0, 0.0)  # weights of (reference, good, bad) per drawn action
    mix_temperature: float = 0.5  # good = softmax(r / T), bad = softmax(-r / T)
    support: float = 1.0  # share of the actions the pairs of a context can contain
    label_temperature: float = 0.5  # Bradley-Terry P(a > b) = sigmoid((r_a - r_b) / T); 0: deterministic
    label_noise: float = 0.0  # probability a label is flipped
    # Probability a label on a *hard* training context is flipped (on top of label_noise): the hard contexts are
    # the hard_share of them where the reference's habit is most wrong (highest regret max_a r - E_ref[r]).
    hard_flip: float = 0.0
    hard_share: float = 0.25
    kl_coef: float = KL_COEF  # fitness = reward - kl_coef * KL(pi || pi_ref); 0: reward only
    replicate_contexts: int = 0  # the last of the confirming half, kept back for replications (split "replicate")
    # Held-out contexts added to the confirming half (after the eval_contexts), from their own random stream: the
    # world's training side and the search half are those of the same setting without them. Scoring is exact and
    # ~free, and on this tier the context term is most of a paired difference's variance, so they buy MDE.
    extra_confirm_contexts: int = 0
    # Held-out contexts added to the search half (before the eval_contexts), from a third stream: a wider search
    # split on the same world. A small one biases the search's ranking systematically (every run seed scores the
    # same contexts; docs/results.md §0, "Every baseline confirmed"), and only this count widens it without
    # redrawing the world, as eval_contexts does.
    extra_search_contexts: int = 0
    beta: float = 0.1  # fine-tune defaults
    steps: int = 80  # few large steps: each step costs two oracle round trips, whatever its batch
    batch: int = 256


PRESETS: dict[str, DiagnosticSetting] = {
    "clean": DiagnosticSetting(),
    "label_noise": DiagnosticSetting(name="label_noise", label_noise=0.3),
    "ties": DiagnosticSetting(name="ties", reward_levels=3, label_temperature=0.0),
    "mixed_quality": DiagnosticSetting(name="mixed_quality", sampler=(0.2, 0.4, 0.4)),
    # Few pairs, always labelled the same way: DPO can push their rejected probabilities to 0 (and drift).
    "deterministic": DiagnosticSetting(name="deterministic", label_temperature=0.0, pairs_per_context=2),
    "shifted_support": DiagnosticSetting(name="shifted_support", support=0.5),
    # Each context's 8 pairs compare only 4 of its 16 actions (6 distinct pairs), so the same pairs recur: DPO's
    # unbounded margin keeps buying KL on pairs already separated, a bounded target (IPO) stops, and no stopping
    # point (rate) of DPO's path reaches it (docs/results.md §0, "A fast-tier setting where loss shape decides").
    "narrow_support": DiagnosticSetting(name="narrow_support", support=0.25, pairs_per_context=8),
    # Deterministic labels with 16 pairs per context, clean's world: the pairs say nearly all the policy class can use
    # (a Bradley-Terry fit to one seed's pairs, made its exact in-class policy, ``fitness.pairs_ceiling``, scores 1.195
    # against 1.197 for the class fitted to the true reward) and the references separate (spread 7.5 x MDE), but the
    # strongest (CELL, 1.176) sits only 1.3 x MDE below the pipeline at 10 seeds: issue 24's bar (3 x) is NOT met. Kept
    # as the best candidate of the scan and the world the search benchmark ran on (docs/results.md §0, "Headroom the
    # pairs carry").
    "rich_deterministic": DiagnosticSetting(name="rich_deterministic", label_temperature=0.0, pairs_per_context=16),
}


def setting(name: str, **overrides) -> DiagnosticSetting:
    """A preset by name, with field overrides (``setting("clean", steps=400)``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown diagnostic setting {name!r} (presets: {', '.join(PRESETS)})")
    return replace(PRESETS[name], **overrides)


@dataclass(frozen=True)
class World:
    """The fixed part of a setting: features, rewards and reference logits of both context sets."""

    train_features: torch.Tensor  # [contexts, features]
    train_reward: torch.Tensor  # [contexts, actions]
    train_ref: torch.Tensor  # reference log-probs [contexts, actions]
    eval_features: torch.Tensor
    eval_reward: torch.Tensor
    eval_ref: torch.Tensor
    support: torch.Tensor  # bool [contexts, actions]: actions the pairs of a context may contain


def _quantise(reward: torch.Tensor, levels: int) -> torch.Tensor:
    """Per context, equal-count levels of the reward's ranks, re-standardised: actions within a level tie."""
    actions = reward.shape[1]
    ranks = reward.argsort(dim=1).argsort(dim=1).to(DTYPE)
    level = torch.floor(ranks * levels / actions)
    return _standardise(level)


def _standardise(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(dim=1, keepdim=True)) / x.std(dim=1, keepdim=True).clamp_min(1e-12)


def heldout_contexts(s: DiagnosticSetting) -> int:
    """All held-out contexts of ``s``, in order: the search half's ``extra_search_contexts``, ``eval_contexts``
    (its first half searches, the rest confirms), then the confirming half's ``extra_confirm_contexts``."""
    return s.extra_search_contexts + s.eval_contexts + s.extra_confirm_contexts


def _heldout_block(gen: torch.Generator, n: int, s: DiagnosticSetting, mix: torch.Tensor,
                   habit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features, reward, reference log-probs) of ``n`` more contexts of the same world (its ``mix`` and habit)."""
    feats = torch.cat([torch.ones(n, 1, dtype=DTYPE),
                       torch.randn(n, s.features - 1, generator=gen, dtype=DTYPE)], dim=1)
    extra = torch.randn(n, s.actions, generator=gen, dtype=DTYPE)
    reward = _standardise(math.sqrt(1 - s.reward_noise) * _standardise(feats @ mix) + math.sqrt(s.reward_noise) * extra)
    if s.reward_levels > 0:
        reward = _quantise(reward, s.reward_levels)
    noise = torch.randn(n, s.actions, generator=gen, dtype=DTYPE)
    return feats, reward, torch.log_softmax(s.ref_skill * reward + habit + s.ref_noise * noise, dim=1)


@lru_cache(maxsize=32)
def world(s: DiagnosticSetting) -> World:
    """Build the world of ``s`` (cached: every seed and loss shares it). The draws of the training contexts and the
    ``eval_contexts`` come first and depend on neither ``extra_confirm_contexts`` nor ``extra_search_contexts``,
    whose contexts come from generators of their own. They do depend on ``eval_contexts``: each draw covers training
    and held-out contexts at once, so another count moves every later draw (the training rewards and reference too;
    measured: a different world, docs/results.md). Kept as it is, since every figure of this tier was measured on
    these draws."""
    gen = torch.Generator().manual_seed(1_000_003 * s.task_seed + 17)
    d, a = s.features, s.actions
    mix = torch.randn(d, a, generator=gen, dtype=DTYPE) / math.sqrt(d)
    habit = s.ref_habit * torch.randn(a, generator=gen, dtype=DTYPE)
    n_all = s.contexts + s.eval_contexts
    feats = torch.cat([torch.ones(n_all, 1, dtype=DTYPE),
                       torch.randn(n_all, d - 1, generator=gen, dtype=DTYPE)], dim=1)
    linear = _standardise(feats @ mix)
    extra = torch.randn(n_all, a, generator=gen, dtype=DTYPE)
    reward = _standardise(math.sqrt(1 - s.reward_noise) * linear + math.sqrt(s.reward_noise) * extra)
    if s.reward_levels > 0:
        reward = _quantise(reward, s.reward_levels)
    noise = torch.randn(n_all, a, generator=gen, dtype=DTYPE)
    ref = torch.log_softmax(s.ref_skill * reward + habit + s.ref_noise * noise, dim=1)
    keep = max(2, math.ceil(s.support * a))
    order = torch.rand(s.contexts, a, generator=gen).argsort(dim=1)
    support = torch.zeros(s.contexts, a, dtype=torch.bool).scatter_(1, order[:, :keep], True)
    n = s.contexts
    def extra(offset: int, count: int) -> list[tuple[torch.Tensor, ...]]:  # a block from a stream of its own
        gen = torch.Generator().manual_seed(1_000_003 * s.task_seed + offset)
        return [_heldout_block(gen, count, s, mix, habit)] if count > 0 else []

    blocks = [*extra(41, s.extra_search_contexts), (feats[n:], reward[n:], ref[n:]),
              *extra(29, s.extra_confirm_contexts)]
    eval_feats, eval_reward, eval_ref = (torch.cat(parts) for parts in zip(*blocks, strict=True))
    return World(feats[:n], reward[:n], ref[:n], eval_feats, eval_reward, eval_ref, support)


@dataclass(frozen=True)
class Pairs:
    """One seed's preference data on the training contexts."""

    context: torch.Tensor  # long [P]
    chosen: torch.Tensor  # long [P]
    rejected: torch.Tensor  # long [P]
    label_correct: torch.Tensor  # bool [P]: chosen has the strictly higher true reward


def _draw(logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.multinomial(torch.softmax(logits, dim=1), 1, generator=gen).squeeze(1)


def hard_contexts(s: DiagnosticSetting) -> torch.Tensor:
    """bool [contexts]: the ``hard_share`` of the training contexts where the reference's habit costs most (its
    regret ``max_a r - E_ref[r]`` at or above that quantile); where ``hard_flip`` concentrates its flips."""
    w = world(s)
    regret = w.train_reward.max(dim=1).values - (w.train_ref.exp() * w.train_reward).sum(dim=1)
    keep = max(1, round(s.hard_share * s.contexts))
    return regret >= regret.sort(descending=True).values[keep - 1]


def flip_rate(s: DiagnosticSetting) -> float:
    """The share of labels flipped, on average over the training contexts (what cDPO and rDPO are told)."""
    share = float(hard_contexts(s).double().mean()) if s.hard_flip > 0 else 0.0
    return s.label_noise + (1 - 2 * s.label_noise) * share * s.hard_flip


@lru_cache(maxsize=64)
def pairs(s: DiagnosticSetting, seed: int) -> Pairs:
    """The pairs of ``seed`` (cached; the same for every loss: common random numbers)."""
    w = world(s)
    gen = torch.Generator().manual_seed(2 * int(seed) + 1)
    ctx = torch.arange(s.contexts).repeat_interleave(s.pairs_per_context)
    reward, mask = w.train_reward[ctx], w.support[ctx]
    t = s.mix_temperature
    samplers = torch.stack([w.train_ref[ctx], reward / t, -reward / t])  # [3, P, A] logits
    weights = torch.tensor(s.sampler, dtype=DTYPE)
    picks = torch.multinomial(weights / weights.sum(), 2 * len(ctx), replacement=True, generator=gen)
    rows = torch.arange(len(ctx))
    first = samplers[picks[: len(ctx)], rows].masked_fill(~mask, -math.inf)
    a1 = _draw(first, gen)
    second = samplers[picks[len(ctx):], rows].masked_fill(~mask, -math.inf)
    second[rows, a1] = -math.inf  # two distinct actions
    a2 = _draw(second, gen)
    r1, r2 = reward[rows, a1], reward[rows, a2]
    if s.label_temperature > 0:
        first_wins = torch.rand(len(ctx), generator=gen, dtype=DTYPE) < torch.sigmoid((r1 - r2) / s.label_temperature)
    else:
        coin = torch.rand(len(ctx), generator=gen, dtype=DTYPE) < 0.5
        first_wins = torch.where(r1 == r2, coin, r1 > r2)
    flip = torch.rand(len(ctx), generator=gen, dtype=DTYPE) < s.label_noise
    first_wins = first_wins ^ flip
    if s.hard_flip > 0:  # drawn last, and only here: every other setting's pairs are those it had before
        hard = hard_contexts(s)[ctx] & (torch.rand(len(ctx), generator=gen, dtype=DTYPE) < s.hard_flip)
        first_wins = first_wins ^ hard
    chosen, rejected = torch.where(first_wins, a1, a2), torch.where(first_wins, a2, a1)
    correct = reward[rows, chosen] > reward[rows, rejected]
    return Pairs(ctx, chosen, rejected, correct)


def exact_scores(features: torch.Tensor, ref: torch.Tensor, reward: torch.Tensor,
                 weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per context: E_{a~pi}[r(x, a)] and KL(pi || pi_ref), summed over the action table (no sampling)."""
    logp = torch.log_softmax(ref + features @ weights, dim=1)
    p = logp.exp()
    return (p * reward).sum(dim=1), (p * (logp - ref)).sum(dim=1)


def describe(s: DiagnosticSetting) -> dict[str, float]:
    """How hard the world is: the reference's return, the best return, how often its mode is the best action."""
    w = world(s)
    data = pairs(s, 0)
    ref_reward = (w.eval_ref.exp() * w.eval_reward).sum(dim=1).mean()
    best = w.eval_reward.max(dim=1)
    mode_best = w.eval_reward.gather(1, w.eval_ref.argmax(dim=1, keepdim=True)).squeeze(1) == best.values
    return {"reference_reward": float(ref_reward), "best_reward": float(best.values.mean()),
            "mode_is_best": float(mode_best.double().mean()),
            "labels_correct": float(data.label_correct.double().mean())}


# ---- as a run's task (``task=diagnostic``) -------------------------------------------------------------

SPLITS = ("search", "confirm", "replicate")


def from_config(cfg: Mapping[str, Any]) -> DiagnosticSetting:
    """The setting a ``task=diagnostic`` config describes: its preset, with each field the config sets (null: the
    preset's). ``beta`` is not among them: the run's ``training.beta`` is, as for every task."""
    names = {f.name for f in fields(DiagnosticSetting)} - {"name", "beta"}
    return setting(str(cfg.get("preset") or "clean"), **{k: v for k, v in cfg.items() if k in names and v is not None})


def split_contexts(s: DiagnosticSetting, split: str) -> slice:
    """The held-out contexts of ``split``: the ``extra_search_contexts`` and the first half of ``eval_contexts`` score
    the search, the rest (and the ``extra_confirm_contexts``) confirm the winners, so the confirmation is scored on
    contexts that chose nothing (no rate, no winner); the last ``replicate_contexts`` of the rest are kept back for
    replications ("replicate"), which then re-score nothing a confirmation chose."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (allowed: {', '.join(SPLITS)})")
    half, total = s.extra_search_contexts + s.eval_contexts // 2, heldout_contexts(s)
    if split == "search":
        return slice(0, half)
    cut = total - s.replicate_contexts
    if not half < cut <= total or (split == "replicate" and cut == total):
        raise ValueError(f"task.replicate_contexts must be in [1, {total - half - 1}] to score split "
                         f"'replicate' (and below {total - half}), got {s.replicate_contexts}")
    return slice(half, cut) if split == "confirm" else slice(cut, total)


def as_task(cfg: Mapping[str, Any]) -> Task:
    """The run's :class:`Task` for ``task=diagnostic``: nothing on disk (the world is made in memory, ~ms); the
    "prompts" are the held-out contexts' names, in the order ``per_prompt`` lists their scores."""
    s = from_config(cfg)
    w = world(s)
    search = split_contexts(s, "search")
    ref_reward = (w.eval_ref.exp() * w.eval_reward).sum(dim=1)[search].mean()
    facts = describe(s)
    names = [f"context {i}" for i in range(heldout_contexts(s))]
    return Task(
        name=str(cfg.get("name") or "diagnostic"), model_path="", tokenizer_path="", pairs_path=Path(),
        heldout_prompts=names[search], confirm_prompts=names[split_contexts(s, "confirm")],
        replicate_prompts=names[split_contexts(s, "replicate")] if s.replicate_contexts else [],
        reward=None, max_new_tokens=1, score="expected",
        meta={"preset": s.name, "pairs": s.contexts * s.pairs_per_context, "contexts": s.contexts,
              "eval_contexts": s.eval_contexts, "extra_confirm_contexts": s.extra_confirm_contexts,
              "extra_search_contexts": s.extra_search_contexts,
              "actions": s.actions,
              "label_noise": flip_rate(s),  # the true flip rate: cDPO and rDPO run at it (search.loop)
              # what the untuned reference (pi_ref) scores on the search contexts: "a useful loss beats it"
              "sft_heldout_reward": float(ref_reward), "best_reward": facts["best_reward"],
              "labels_correct": facts["labels_correct"], "mode_is_best": facts["mode_is_best"]},
    )
