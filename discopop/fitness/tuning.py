"""The fair protocol: every loss is judged at its own best learning rate, chosen on the search prompts.

Under Adam a loss's scale is irrelevant but its *shape* decides how far one step moves the policy,
so one fixed learning rate ranks losses by how well they tolerate that rate (measured on the
embedded task: PFL peaks at the low end of the grid, DPO, hinge and IPO at the high end, LRML only
escapes its wrong-way slope at zero at the top). A user tunes the learning rate; so does the
protocol: a loss's fitness is its best search fitness over ``training.lr_grid`` (same seed, data
and initial weights at every grid point), and the rate that gave it is the one its fresh-seed
confirmation uses.

A full grid costs ``len(grid)`` fine-tunes per candidate, which would price most of a
50-generation run out of its 15-minute budget, so a candidate races: it is first *screened* at one
grid point (its first parent's chosen rate, else the rate the run's scored losses chose most
often, else the grid's middle); only if the screen comes within ``training.lr_screen_margin`` of
the run's best fitness, i.e. when the candidate could matter, does it climb the grid: neighbours of
the best rate so far are tried until neither improves (a local maximum on the grid). A
screened-out candidate keeps its screen fitness, a lower bound on its best, and is marked
``lr_tuned: false``.

Equal budgets, and the data that chooses does not rank. References climb exactly as a candidate
that passed its screen does (from the grid's middle, always worth tuning), so a discovery is held
to references tuned no harder than itself. The rate is chosen on the even-indexed search prompts
(``fitness_tune``) and the row's fitness is the odd-indexed prompts' fitness at that rate: the best
of several rates scored on the prompts that rank it is inflated by its winner's curse (~0.002-0.004
on the embedded task with six rates), and the inflation grows with the number of rates tried, which
would favour whichever row was tried at more rates. With no per-prompt scores both halves are the
reported fitness.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from discopop.config import TrainingSettings, typed


@dataclass(frozen=True)
class LrProtocol:
    """The learning-rate grid and the screening rule, read once from ``cfg["training"]``."""

    grid: tuple[float, ...]
    screen_margin: float | None  # None: every candidate gets the whole grid

    @classmethod
    def from_config(cls, training: TrainingSettings | Mapping[str, Any]) -> LrProtocol:
        """From the run's ``training`` settings (a plain mapping is read as those settings)."""
        if isinstance(training, Mapping):
            training = typed(TrainingSettings, training, where="training")
        grid = training.lr_grid or [training.learning_rate]
        margin = training.lr_screen_margin
        return cls(grid=tuple(sorted(float(lr) for lr in grid)),
                   screen_margin=None if margin is None else float(margin))

    def default(self) -> float:
        """The grid's middle: the screening rate when nothing better is known."""
        return self.grid[(len(self.grid) - 1) // 2]

    def screen_rate(self, parent_rates: list[float], run_rates: list[float]) -> float:
        """The grid point most likely to be a candidate's best: its parent's, else the run's most common."""
        for rate in [*parent_rates, *(r for r, _ in Counter(run_rates).most_common(1))]:
            if any(math.isclose(rate, g) for g in self.grid):
                return rate
        return self.default()

    def next_rates(self, sweep: Sweep) -> list[float]:
        """Untried grid neighbours of the best rate so far (a failed rate counts as tried): the climb's next step."""
        tried = {*sweep.results, *sweep.errors}
        best = sweep.best()
        if best is None:
            return []
        i = next(k for k, lr in enumerate(self.grid) if math.isclose(lr, best[0]))
        return [self.grid[k] for k in (i - 1, i + 1)
                if 0 <= k < len(self.grid) and not any(math.isclose(self.grid[k], t) for t in tried)]

    def worth_tuning(self, screen_fitness: float, best_fitness: float | None) -> bool:
        """Spend the rest of the grid only on a candidate whose screen is near the run's best."""
        if self.screen_margin is None or best_fitness is None:
            return True
        return screen_fitness >= best_fitness - self.screen_margin


def split_fitness(data: Mapping[str, Any]) -> tuple[float, float]:
    """(tune, rank): one fine-tune's fitness on its even- and odd-indexed scored prompts.

    Per prompt the fitness is reward - kl_coef * KL, as the scorer computes its mean. Interleaving
    (rather than first half / second half) keeps both halves alike if the prompts come in an order.
    """
    rewards = data.get("per_prompt") or []
    if len(rewards) < 2:
        value = float(data["fitness"])
        return value, value
    kls = data.get("per_prompt_kl") or [0.0] * len(rewards)
    coef = float(data.get("kl_coef") or 0.0)
    values = [float(r) - coef * float(k) for r, k in zip(rewards, kls, strict=True)]
    tune, rank = values[0::2], values[1::2]
    return sum(tune) / len(tune), sum(rank) / len(rank)


@dataclass
class Sweep:
    """One candidate's fine-tunes over the grid: fitness per learning rate and the chosen one."""

    results: dict[float, dict[str, Any]] = field(default_factory=dict)  # lr -> the worker's train reply
    errors: dict[float, tuple[str, str]] = field(default_factory=dict)  # lr -> (stage, why that fine-tune failed)
    tuned: bool = False  # the whole grid, or a climb to a local maximum, was run (False: screened out or failed)
    evaluations: list[Any] = field(default_factory=list)  # archive.Evaluation per fine-tune, archived with the fate

    def add(self, lr: float, ok: bool, data: dict[str, Any], stage: str, error: str | None) -> None:
        if ok:
            self.results[lr] = data
        else:
            self.errors[lr] = (stage, error or "failed")

    def best(self) -> tuple[float, dict[str, Any]] | None:
        """The learning rate with the highest *tuning* fitness (ties: the smaller rate, the gentler update)."""
        if not self.results:
            return None
        return max(sorted(self.results.items()), key=lambda item: split_fitness(item[1])[0])

    def ranked_fitness(self) -> float | None:
        """The fitness that ranks the row: the held-apart half of the prompts, at the rate the other half chose."""
        best = self.best()
        return None if best is None else split_fitness(best[1])[1]

    def summary(self, grid: tuple[float, ...]) -> dict[str, Any]:
        """What the archive keeps: per-rate fitness, failures, and whether the best sits on the grid's edge."""
        best = self.best()
        chosen = best[0] if best else None
        return {
            "learning_rate": chosen,
            "lr_tuned": self.tuned,
            # the tuning half's fitness per rate: what chose the rate (the row's fitness is the other half's)
            "lr_sweep": {f"{lr:g}": round(split_fitness(d)[0], 6) for lr, d in sorted(self.results.items())},
            "fitness_tune": None if best is None else round(split_fitness(best[1])[0], 6),
            # each rate's reward (the fitness's score), greedy accuracy and KL: the loss's reward-KL frontier
            "lr_points": {f"{lr:g}": {k: _rounded(d.get(k)) for k in ("reward", "greedy", "kl")}
                          for lr, d in sorted(self.results.items())},
            "lr_errors": {f"{lr:g}": f"{stage}: {err}" for lr, (stage, err) in sorted(self.errors.items())},
            # The optimum may lie beyond the grid: a user would widen it; the report says so.
            "lr_at_edge": bool(self.tuned and chosen is not None and len(grid) > 1
                               and (math.isclose(chosen, grid[0]) or math.isclose(chosen, grid[-1]))),
        }


def _rounded(value: Any) -> float | None:
    return round(float(value), 6) if isinstance(value, int | float) and not isinstance(value, bool) else None
