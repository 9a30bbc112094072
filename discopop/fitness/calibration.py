"""Can a task rank losses? Three figures from the per-prompt scores of reference losses on fresh seeds.

Issue 24 asks three things of a task before a search on it can mean anything, each computed here from
each reference loss's seeds x prompts matrices at its chosen setting (the same fresh seeds and held-out
prompts for every loss, as a confirmation scores them):

1. **Signal per prompt**: the share of held-out prompts whose score varies across losses and seeds. A
   prompt whose score never moves cancels out of every paired difference: it cannot tell two losses
   apart. The score is continuous now, so "varies" means its standard deviation over all fine-tunes
   (losses x seeds, ddof 1) exceeds ``threshold`` (default 0.01: one point of answer probability on the
   embedded tasks). It is measured on the score term (answer probability, or the bandit's exact reward),
   not the fitness: on the embedded tasks the KL term is estimated from one sampled completion, so the
   per-prompt fitness moves on every prompt by sampling noise alone. The fitness figure is reported
   beside it, and so is the share whose *greedy* reward is not the same in every fine-tune (the 0/1
   figure the issue measured at 8.9% under the old fitness). Goal: >= 50%.
2. **Spread in units of the MDE**: best minus worst fresh-seed mean fitness over the references, divided
   by the median over all pairs of references of the minimum detectable effect of their paired
   comparison. Goal: >= 10.
3. **MDE against the strongest dissimilar baseline**: the strongest baseline is the reference with the
   best fresh-seed mean (``stats.strongest_baseline``, the confirmation's rule); every other reference
   stands in for a candidate that is not a near-copy of it; the figure is the median over them of the
   MDE of their comparison with it. Goal: at most a quarter of the gap from DPO to the best other
   reference (a gap <= 0, DPO being the strongest, cannot meet it).

Every MDE is the one the confirmation states: ``stats.compare``'s standard error and degrees of freedom,
through ``stats.minimum_detectable`` at the Holm bar of the default confirmation's family
(``alpha / family``, as ``stats.decide`` sets ``mde_family``); the single-test MDE is kept beside it.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from discopop.fitness import stats

VARY_THRESHOLD = 0.01  # per-prompt SD over fine-tunes above which a prompt's score "varies"
SHARE_GOAL, SPREAD_GOAL, GAP_FRACTION = 0.5, 10.0, 0.25  # issue 24's goals for figures 1, 2 and 3


@dataclass
class ArmScores:
    """One reference at its chosen setting: seeds x prompts matrices on the shared fresh seeds and prompts.

    ``fitness``: each prompt's share of the fitness (score - kl_coef * KL); ``score``: the score term alone;
    ``greedy``: each prompt's greedy reward, None where the runs did not keep it."""

    fitness: np.ndarray
    score: np.ndarray
    greedy: np.ndarray | None = None


@dataclass
class PairMde:
    """The paired comparison ``candidate - baseline`` as the confirmation would state it."""

    candidate: str
    baseline: str
    delta: float
    se: float
    df: float
    mde: float  # at alpha, one test
    mde_family: float  # at alpha / family: Holm's first step over the default confirmation's comparisons


@dataclass
class Calibration:
    """The three figures and what they were computed from (see the module docstring)."""

    seeds: int
    prompts: int
    fine_tunes: int
    threshold: float
    family: int
    varying_score: float  # figure 1
    varying_fitness: float
    greedy_varying: float | None  # share whose greedy reward is not identical in every fine-tune that kept it
    greedy_always: float | None  # 0/1 rewards only: share right in every fine-tune
    greedy_never: float | None  # ... and never right
    greedy_fine_tunes: int
    median_sd: float  # median over prompts of the score's SD across fine-tunes
    means: dict[str, float]
    strongest: str
    spread: float
    spread_unit: float  # median pairwise mde_family
    spread_in_mde: float  # figure 2
    vs_strongest: list[PairMde]
    mde_vs_strongest: float  # figure 3: median mde_family over the other references
    gap: float | None  # best other reference's mean - DPO's (None without DPO)
    pairs: list[PairMde] = field(default_factory=list)

    @property
    def goals(self) -> dict[str, bool]:
        """Each figure against issue 24's goal."""
        return {"varying": self.varying_score >= SHARE_GOAL, "spread": self.spread_in_mde >= SPREAD_GOAL,
                "mde": self.gap is not None and self.gap > 0 and self.mde_vs_strongest <= GAP_FRACTION * self.gap}

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "goals": self.goals}


def sd_over_fine_tunes(stack: np.ndarray) -> np.ndarray:
    """Per prompt, the SD (ddof 1) of its score over the rows of a fine-tunes x prompts stack."""
    x = np.asarray(stack, dtype=float)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need a fine-tunes x prompts stack with at least 2 fine-tunes, got shape {x.shape}")
    return x.std(axis=0, ddof=1)


def varying_share(stack: np.ndarray, threshold: float = VARY_THRESHOLD) -> float:
    """Share of prompts (columns) whose SD over the fine-tunes (rows) exceeds ``threshold``."""
    return float((sd_over_fine_tunes(stack) > threshold).mean())


def greedy_shares(stack: np.ndarray) -> tuple[float, float | None, float | None]:
    """(share of prompts whose greedy reward is not the same in every fine-tune, share right every time, share
    never right); the last two only for 0/1 rewards (None otherwise, e.g. the bandit's reward of its mode)."""
    x = np.asarray(stack, dtype=float)
    constant = np.isclose(x.max(axis=0), x.min(axis=0), rtol=0.0, atol=1e-12)
    if not np.isin(x, (0.0, 1.0)).all():
        return float(1.0 - constant.mean()), None, None
    return float(1.0 - constant.mean()), float((x == 1.0).all(axis=0).mean()), float((x == 0.0).all(axis=0).mean())


def pair_mde(candidate: str, baseline: str, a: np.ndarray, b: np.ndarray, family: int) -> PairMde:
    """``stats.compare`` of ``a - b`` and its MDE at the confirmation's Holm bar (``alpha / family``)."""
    comp = stats.compare(candidate, baseline, a, b)
    if comp.delta is None:
        raise ValueError(f"{candidate} vs {baseline}: {comp.reason}")
    family_mde = float(stats.minimum_detectable(comp.se, comp.df, stats.ALPHA / max(1, family)))
    return PairMde(candidate, baseline, comp.delta, comp.se, comp.df, float(comp.mde), family_mde)


def calibrate(arms: Mapping[str, ArmScores], family: int, threshold: float = VARY_THRESHOLD,
              dpo: str = "dpo") -> Calibration:
    """The three figures of the module docstring from each reference's matrices (two references at least, all
    on the same seeds and prompts, two seeds at least). ``family``: the comparisons a default confirmation
    Holm-corrects together (``2 * confirm.top_k``)."""
    if len(arms) < 2:
        raise ValueError("at least two references are needed to compare losses")
    shapes = {np.shape(a.fitness) for a in arms.values()} | {np.shape(a.score) for a in arms.values()}
    if len(shapes) != 1:
        raise ValueError(f"every matrix must have the same seeds x prompts shape, got {sorted(shapes)}")
    seeds, prompts = next(iter(shapes))
    fitness = np.concatenate([np.asarray(a.fitness, float) for a in arms.values()])
    score = np.concatenate([np.asarray(a.score, float) for a in arms.values()])
    greedy_arms = [np.asarray(a.greedy, float) for a in arms.values() if a.greedy is not None]
    greedy: tuple[float | None, float | None, float | None] = (None, None, None)
    if sum(len(g) for g in greedy_arms) >= 2:
        greedy = greedy_shares(np.concatenate(greedy_arms))
    means = {name: float(np.mean(a.fitness)) for name, a in arms.items()}
    names = list(arms)
    strongest = stats.strongest_baseline(names, means.get)
    pairs = [pair_mde(a, b, arms[a].fitness, arms[b].fitness, family) for a, b in combinations(names, 2)]
    vs = [pair_mde(n, strongest, arms[n].fitness, arms[strongest].fitness, family) for n in names if n != strongest]
    unit = statistics.median(p.mde_family for p in pairs)
    spread = max(means.values()) - min(means.values())
    others = [m for n, m in means.items() if n != dpo]
    gap = max(others) - means[dpo] if dpo in means and others else None
    return Calibration(
        seeds=seeds, prompts=prompts, fine_tunes=len(fitness), threshold=threshold, family=family,
        varying_score=varying_share(score, threshold), varying_fitness=varying_share(fitness, threshold),
        greedy_varying=greedy[0], greedy_always=greedy[1], greedy_never=greedy[2],
        greedy_fine_tunes=sum(len(g) for g in greedy_arms), median_sd=float(np.median(sd_over_fine_tunes(score))),
        means=means, strongest=strongest, spread=spread, spread_unit=unit,
        spread_in_mde=spread / unit if unit > 0 else float("inf"), vs_strongest=vs,
        mde_vs_strongest=statistics.median(p.mde_family for p in vs), gap=gap, pairs=pairs)


@dataclass
class VarianceSplit:
    """Where the variance of a paired difference's grand mean comes from (shares summing to 1): the seed term
    (shrinks only with seeds), the prompt (context) term (only with prompts) and the residual (with both)."""

    seed: float
    prompt: float
    residual: float


def variance_split(a: np.ndarray, b: np.ndarray) -> VarianceSplit:
    """The unbiased two-way components of ``a - b`` (seeds x prompts) as shares of the grand mean's variance:
    seed ``(MS_seed - MS_res) / (S P)``, prompt ``(MS_prompt - MS_res) / (S P)``, residual ``MS_res / (S P)``, the
    first two floored at 0 (the common factor ``1 / (S P)`` cancels in the shares)."""
    diff = np.asarray(a, float) - np.asarray(b, float)
    if diff.ndim != 2 or min(diff.shape) < 2:
        raise ValueError(f"need a seeds x prompts difference with 2 seeds and 2 prompts at least, got {diff.shape}")
    _, ms_seed, ms_prompt, ms_res = (float(v) for v in stats.mean_squares(diff))
    parts = np.array([max(ms_seed - ms_res, 0.0), max(ms_prompt - ms_res, 0.0), ms_res])
    total = parts.sum()
    if total <= 0:
        return VarianceSplit(0.0, 0.0, 1.0)
    seed, prompt, residual = (float(p) for p in parts / total)
    return VarianceSplit(seed, prompt, residual)


def subset(arms: Mapping[str, ArmScores], seeds: int, prompts: int) -> dict[str, ArmScores]:
    """Every arm on its first ``seeds`` seeds and first ``prompts`` prompts: a smaller confirmation of the same
    fine-tunes (nested, so a grid of sizes read from one run compares like with like)."""
    def cut(x: np.ndarray | None) -> np.ndarray | None:
        return None if x is None else np.asarray(x, float)[:seeds, :prompts]

    out = {}
    for name, arm in arms.items():
        have = np.shape(arm.fitness)
        if seeds > have[0] or prompts > have[1]:
            raise ValueError(f"{name}: asked for {seeds} x {prompts}, the arm has {have[0]} x {have[1]}")
        out[name] = ArmScores(cut(arm.fitness), cut(arm.score), cut(arm.greedy))
    return out
