"""Noise-aware selection: extra search seeds for the candidates in contention, and a lower confidence bound.

One fine-tune is one draw of the training noise (initial state, pair subsample, data order); across
seeds a loss's search fitness moves by about 0.005 on the embedded task, as much as the gaps between
the best losses. Selecting parents (or an LLM's "best so far") on one seed therefore climbs per-seed
luck, and the winner's curse is only caught at confirmation. So, after the learning-rate protocol,
a candidate *races* (``evaluate.Evaluator``): at its chosen rate it gets one more search seed at a
time while it is still in contention for the top ``top_k`` (its upper bound reaches the k-th best
lower bound of the scored rows), up to ``max_seeds`` seeds. Reference losses, the bar everyone is
compared with, always get all ``max_seeds`` (see docs/DESIGN.md).

Selection then uses the lower confidence bound ``mean - z * noise / sqrt(n)``: ``noise`` is one
seed's standard deviation, pooled over every row with two or more seeds (per-row deviations from
2-3 seeds are too noisy to trust alone) and shrunk towards ``noise_prior`` while few are measured.
A loss measured once is therefore not preferred to one measured three times with the same mean.

Torch-free and pure: the archive, the proposers and the evaluator share these functions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from discopop.config import RunSettings, SelectionSettings, check_race

# Extra search seeds are base_seed + 500 + i: never the search seed itself, nor a confirmation seed
# (base_seed + 1000 + i, ``confirmation.SEED_OFFSET``), so confirmation stays fresh.
RACE_SEED_OFFSET = 500
PRIOR_DF = 2.0  # the prior noise counts as this many degrees of freedom in the pooled estimate
_SELECTION = SelectionSettings()
STATE_KEY = "selection"  # run_state key under which the evaluator records the policy for readers


@dataclass(frozen=True)
class RacePolicy:
    """``selection``: how many seeds a candidate may get and how its lower bound is drawn.

    The fields are ``SelectionSettings``' (documented there); the class defaults are no race (one seed
    per row, what an archive without a recorded policy ran) and otherwise the settings' defaults.
    """

    max_seeds: int = 1
    top_k: int = _SELECTION.top_k
    z: float = _SELECTION.z
    noise_prior: float = _SELECTION.noise_prior

    def __post_init__(self) -> None:
        check_race(self.max_seeds, self.top_k, self.z, self.noise_prior)

    @classmethod
    def from_settings(cls, selection: SelectionSettings) -> RacePolicy:
        """From the run's typed ``selection`` settings (``__post_init__`` checks them: one ``ValueError`` line)."""
        return cls(max_seeds=selection.max_seeds, top_k=selection.top_k, z=selection.z,
                   noise_prior=selection.noise_prior)

    @classmethod
    def from_config(cls, cfg: RunSettings) -> RacePolicy:
        """From the run settings."""
        return cls.from_settings(cfg.selection)

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None) -> RacePolicy:
        """From what ``as_dict`` stored in the archive's run_state (absent or malformed: the defaults)."""
        try:
            return cls(**{k: state[k] for k in ("max_seeds", "top_k", "z", "noise_prior") if k in state})
        except (TypeError, ValueError):
            return cls()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def enabled(self) -> bool:
        return self.max_seeds > 1

    def extra_seeds(self, base_seed: int) -> list[int]:
        """The seeds a row may get after its search seed, in the order they are run."""
        return [base_seed + RACE_SEED_OFFSET + i for i in range(self.max_seeds - 1)]


@dataclass(frozen=True)
class SeedScores:
    """A row's search fitness at its chosen learning rate, one value per successful seed."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def sum_sq(self) -> float:
        """Sum of squared deviations from the mean: (n - 1) times the sample variance."""
        m = self.mean
        return sum((v - m) ** 2 for v in self.values)

    def lower(self, noise: float, z: float) -> float:
        return self.mean - z * noise / math.sqrt(self.n)

    def upper(self, noise: float, z: float) -> float:
        return self.mean + z * noise / math.sqrt(self.n)


def scores_of(status: str, fitness: float | None, metrics: Mapping[str, Any]) -> SeedScores | None:
    """A scored row's seed scores: ``metrics.race.fitness`` when it raced, else its one fitness."""
    if status != "scored" or fitness is None or not math.isfinite(fitness):
        return None
    race = metrics.get("race") if isinstance(metrics, Mapping) else None
    values = race.get("fitness") if isinstance(race, Mapping) else None
    if isinstance(values, list):
        finite = tuple(float(v) for v in values if isinstance(v, int | float) and math.isfinite(v))
        if finite:
            return SeedScores(finite)
    return SeedScores((float(fitness),))


def pick_scores_of(status: str, metrics: Mapping[str, Any]) -> SeedScores | None:
    """A scored row's fitness per seed on the prompts held out of selection (``metrics.pick``, written with
    ``selection.pick_holdout``): what orders the finalists. None without it, or with no finite value."""
    pick = metrics.get("pick") if status == "scored" and isinstance(metrics, Mapping) else None
    values = pick.get("fitness") if isinstance(pick, Mapping) else None
    if not isinstance(values, list):
        return None
    finite = tuple(float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)
                   and math.isfinite(v))
    return SeedScores(finite) if finite else None


def pooled_noise(scores: Iterable[SeedScores], prior: float) -> float:
    """One seed's fitness std, pooled over rows with several seeds and shrunk towards ``prior``."""
    sum_sq, df = PRIOR_DF * prior ** 2, PRIOR_DF
    for s in scores:
        if s.n > 1:
            sum_sq += s.sum_sq
            df += s.n - 1
    return math.sqrt(sum_sq / df)


def kth_lower(rivals: Iterable[SeedScores], policy: RacePolicy, noise: float) -> float:
    """The k-th best lower bound among ``rivals`` (-inf when fewer than k: every row is in contention)."""
    lows = sorted((r.lower(noise, policy.z) for r in rivals), reverse=True)
    return lows[policy.top_k - 1] if len(lows) >= policy.top_k else -math.inf


def in_contention(mine: SeedScores, bar: float, policy: RacePolicy, noise: float) -> bool:
    """Could the row still enter the top k? Its upper bound reaches the k-th best lower bound ``bar``."""
    return mine.upper(noise, policy.z) >= bar


def seeds_wanted(mine: SeedScores, tried: int, reference: bool, bar: float, policy: RacePolicy,
                 noise: float) -> int:
    """How many more seeds to run now: all that are left for a reference, one while in contention, else 0.

    ``tried`` counts every seed run so far (failed ones too: a failed seed is never retried, since
    retrying until one succeeds would select lucky seeds).
    """
    left = policy.max_seeds - tried
    if left <= 0:
        return 0
    if reference:
        return left
    return 1 if in_contention(mine, bar, policy, noise) else 0


def summary(seeds: list[int], values: list[float | None], learning_rate: float | None,
            failed: str | None) -> dict[str, Any]:
    """What ``metrics.race`` keeps: per-seed fitness (None where a seed failed) in seed order, mean, std, count."""
    pairs = sorted(zip(seeds, values, strict=True), key=lambda pair: pair[0])  # not the order runs finished in
    seeds, values = [s for s, _ in pairs], [v for _, v in pairs]
    ok = [v for v in values if v is not None]
    scores = SeedScores(tuple(ok)) if ok else None
    return {"seeds": seeds, "fitness": values, "learning_rate": learning_rate, "failed": failed,
            "n": len(ok), "mean": scores.mean if scores else None,
            "std": math.sqrt(scores.sum_sq / (scores.n - 1)) if scores and scores.n > 1 else None}


@dataclass(frozen=True)
class Standing:
    """A row's selection figures, as proposers see them (``HistoryEntry.fitness_*``)."""

    mean: float
    lcb: float
    seeds: int


def standings(rows: Iterable[tuple[int, SeedScores | None]], policy: RacePolicy) -> dict[int, Standing]:
    """Mean, lower bound and seed count of every scored row, with the noise pooled over all of them."""
    scored = [(row_id, s) for row_id, s in rows if s is not None]
    noise = pooled_noise((s for _, s in scored), policy.noise_prior)
    return {row_id: Standing(s.mean, s.lower(noise, policy.z), s.n) for row_id, s in scored}
