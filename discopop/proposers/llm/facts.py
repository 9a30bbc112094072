"""What fitness really is in this run, as facts the LLM is told (the system prompt's "How fitness is measured").

Built in one place from the run's config, the task's metadata and the archive, so the prompt
states the actual numbers instead of a generic description: the KL coefficient and beta the run
uses, the learning-rate protocol, how noisy a fitness value is (measured on fresh seeds once the
run has a confirmation) and what the untuned reference model already scores.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from discopop.config import RunSettings

NOT_MEASURED = "not yet measured"


@dataclass(frozen=True)
class FitnessFacts:
    """The numbers behind a fitness value; ``render()`` is the text the prompt carries."""

    kl_coef: float
    beta: float
    learning_rates: tuple[float, ...]
    epochs: int | None = None
    noise_std: float | None = None  # pooled std of fitness over fresh seeds; None until measured
    noise_candidates: int = 0  # how many confirmed candidates the noise was pooled over
    sft_reward: float | None = None  # held-out reward of the reference (SFT) model before any tuning
    noise_from: str = "fresh seeds"  # "fresh seeds" (confirmation) or "search seeds" (candidates re-scored in search)
    betas: tuple[float, ...] | None = None  # training.beta x training.beta_grid: the betas each loss is tuned over
    score: str = "greedy"  # task.score: greedy (reward of greedy answers), probability (of the right answer) or
    # expected (task=diagnostic: the exact expected reward)

    @classmethod
    def from_run(cls, cfg: RunSettings, task_meta: Mapping[str, Any], rows: Iterable[Any] = ()) -> FitnessFacts:
        """From the run's settings, ``task.meta`` and archived rows (anything with a ``metrics`` dict)."""
        training = cfg.training
        grid = training.lr_grid
        rates = tuple(float(v) for v in grid) if grid else (float(training.learning_rate),)
        epochs = training.epochs
        multipliers = training.beta_grid
        betas = None if not multipliers or list(map(float, multipliers)) == [1.0] else tuple(
            sorted(float(training.beta) * float(m) for m in multipliers))
        variances = []
        for row in rows:
            conf = (getattr(row, "metrics", None) or {}).get("confirmation") or {}
            variance = _fresh_seed_variance(conf)
            if variance is not None:
                variances.append(variance)
        sft = task_meta.get("sft_heldout_reward")
        return cls(
            kl_coef=float(cfg.task.kl_coef), beta=float(training.beta), learning_rates=rates, epochs=epochs,
            noise_std=math.sqrt(sum(variances) / len(variances)) if variances else None,
            noise_candidates=len(variances), sft_reward=float(sft) if sft is not None else None, betas=betas,
            score="expected" if getattr(cfg.task, "kind", None) == "diagnostic"
            else str(getattr(cfg.task, "score", None) or "greedy"),
        )

    def render(self) -> str:
        rates = ", ".join(f"{v:g}" for v in self.learning_rates)
        epochs = f" for {self.epochs} epoch{'s' if self.epochs != 1 else ''}" if self.epochs else ""
        if not self.learning_rates:
            protocol = "not given"
        elif len(self.learning_rates) > 1:
            protocol = (f"each loss is trained{epochs} with Adam and judged at its best learning rate on the grid "
                        f"[{rates}], chosen on the search prompts (a new loss is first tried at its parent's best "
                        "rate and climbs the grid only if it comes near the run's best). A loss's overall scale "
                        "and any added constant do not matter; only the shape of its gradient does")
        else:
            protocol = (f"each loss is trained{epochs} at learning rate {rates} with Adam (a loss's overall scale "
                        "and any added constant do not matter; only the shape of its gradient does)")
        kl = f"minus kl_coef x KL(policy || reference) in nats, with kl_coef = {self.kl_coef:g}"
        if not self.kl_coef:
            kl += " (no KL penalty: only the reward counts)"
        noise = NOT_MEASURED if self.noise_std is None else (
            f"about {self.noise_std:.3f} (std of fitness over {self.noise_from}, pooled over {self.noise_candidates} "
            f"{'confirmed' if self.noise_from == 'fresh seeds' else 're-scored'} losses): differences smaller than "
            "that are noise")
        sft = "not recorded" if self.sft_reward is None else f"{self.sft_reward:.3f}"
        reward = ("mean task reward of its greedy answers on held-out prompts; on the embedded tasks 1 for an exactly "
                  "right answer, else 0")
        if self.score == "expected":  # task=diagnostic
            reward = ("exact expected reward of the policy's action on held-out contexts of a contextual bandit, "
                      "standardised per context: uniform play scores 0, the best action about 1.8")
        if self.score == "probability":
            reward = ("mean probability the policy gives the exactly right answer on held-out prompts, i.e. its "
                      "expected 0/1 reward")
        return "\n".join([
            f"- fitness = held-out reward of the tuned policy ({reward}) {kl}.",
            f"- beta = {self.beta:g}: the value passed to your loss as `beta` in training." if not self.betas else
            f"- beta: the value passed to your loss as `beta` in training; like the learning rate it is tuned for "
            f"every loss, over [{', '.join(f'{b:g}' for b in self.betas)}] (so a constant that only rescales "
            "beta * rho gains nothing).",
            f"- learning rate: {protocol}.",
            f"- noise level: {noise}.",
            f"- the reference (SFT) model, before any preference training, scores {sft}: a useful loss beats it."
            if self.score != "probability" else f"- the reference (SFT) model, before any preference training, "
            f"answers {sft} of the held-out prompts right greedily (its accuracy, not its fitness).",
        ])


def _fresh_seed_variance(conf: Mapping[str, Any]) -> float | None:
    """One confirmed row's fitness variance over its fresh seeds: the stored ``std`` (``confirmation.arm_scores``),
    else computed from the stored per-seed ``fitness`` (confirmations archived before ``std`` was written)."""
    values = [float(v) for v in conf.get("fitness") or () if isinstance(v, int | float) and math.isfinite(v)]
    if len(values) < 2:
        return None
    std = conf.get("std")
    if isinstance(std, int | float) and math.isfinite(std):
        return float(std) ** 2
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / (len(values) - 1)


def seed_noise(entries: Iterable[Any]) -> tuple[float, int] | None:
    """Pooled std of fitness over seeds, and how many entries it pools, from history entries that carry
    ``fitness_seeds`` (two or more finite scores); None when none does."""
    variances = []
    for entry in entries:
        seeds = [float(v) for v in (getattr(entry, "fitness_seeds", None) or ())
                 if isinstance(v, int | float) and math.isfinite(v)]
        if len(seeds) > 1:
            mean = sum(seeds) / len(seeds)
            variances.append(sum((v - mean) ** 2 for v in seeds) / (len(seeds) - 1))
    return (math.sqrt(sum(variances) / len(variances)), len(variances)) if variances else None

