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
to references tuned no harder than itself. The best of several rates scored on the data that ranks it
is inflated by its winner's curse (~0.002-0.004 on the embedded task with six rates), and the inflation
grows with the number of rates tried, which would favour whichever row was tried at more rates. So the
data that chooses is held apart, in one of two ways:

* ``training.tune_seeds`` = 0 (the default; every TRL task): the rate is chosen on the even-indexed search
  prompts (``fitness_tune``) and the row's fitness is the odd-indexed prompts' fitness at that rate, *of the
  same seed*. With no per-prompt scores both halves are the reported fitness.
* ``training.tune_seeds`` = k > 0 (the exact tier, ``task=diagnostic``, where a fine-tune is cheap): each
  grid-point job also fine-tunes on k tuning seeds (``diagnostic_tune.tuning_seeds``: seed + 2000 + i,
  disjoint from the race's and the confirmation's seeds); their mean fitness on every search prompt
  (``TrainReply.tune_fitness``) chooses the rate, and the row's fitness is the job's own seed on every search
  prompt. On that tier the seed term is 80-94% of a difference's variance, so two halves of one seed share
  most of the noise the choice selects on; other seeds do not (docs/results.md §0, "Rates chosen on seeds
  that do not rank"). Race seeds then count every search prompt too (:meth:`LrProtocol.rank`).

The pick held out of selection (``selection.pick_holdout``: on for ``task=diagnostic``, off elsewhere). The
prompts that rank a row are interleaved once more: one half ranks it for everything selection does (its fitness,
the race, parents, the LLM's view), the other (``metrics.pick``) only orders the finalists sent to confirmation,
so the pick is not made on the prompts selection climbed.

The beta axis (``training.beta_grid``, multipliers of ``training.beta``; off by default). The offline
evolution tunes a candidate's constants, and most of them (a margin, a temperature, a scale on rho)
rescale beta*rho, so a reference kept at the run's beta would face candidates tuned over their effective
beta. With the axis on, a grid point is a (learning rate, beta) pair and every row climbs over both:
a screen at one point (references: the grid's middle rate at the multiplier nearest 1), then untried
neighbours along either axis of the best point so far, until none improves (a local maximum of the
grid, coordinate-wise). The point is chosen on the tuning half and the row ranked on the other, as for
the rate alone, and the row records its beta (``metrics.beta``), which its race seeds, its confirmation
and every export use. Off, a point is (rate, None): the jobs name no beta and the archive is today's.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from discopop.config import TrainingSettings
from discopop.execution.messages import TrainReply

# One grid point: (learning rate, beta); beta None where the beta axis is off (the job uses training.beta).
Point = tuple[float, float | None]


@dataclass(frozen=True)
class LrProtocol:
    """The learning-rate grid (and beta grid) and the screening rule, read once from the ``training`` settings."""

    grid: tuple[float, ...]
    screen_margin: float | None  # None: every candidate gets the whole grid
    betas: tuple[float, ...] | None = None  # the beta values tried (training.beta x beta_grid); None: the axis is off
    base_beta: float | None = None  # training.beta: the beta axis starts at the grid value nearest it
    tune_seeds: int = 0  # training.tune_seeds: tuning seeds per grid-point job (0: the even/odd prompt split)
    pick_holdout: bool = False  # selection.pick_holdout: rank on one half of the ranking prompts, pick on the other

    @classmethod
    def from_config(cls, training: TrainingSettings, pick_holdout: bool = False) -> LrProtocol:
        """From the run's ``training`` settings (and ``selection.pick_holdout``)."""
        grid = training.lr_grid or [training.learning_rate]
        margin = training.lr_screen_margin
        multipliers = training.beta_grid
        base = float(training.beta)
        # A one-point grid at x1 is the axis off: the jobs name no beta, so the archive is the same as without it.
        off = not multipliers or (len(multipliers) == 1 and math.isclose(float(multipliers[0]), 1.0))
        betas = None if off else tuple(sorted({base * float(m) for m in multipliers}))
        return cls(grid=tuple(sorted(float(lr) for lr in grid)),
                   screen_margin=None if margin is None else float(margin), betas=betas,
                   base_beta=None if off else base, tune_seeds=int(training.tune_seeds or 0),
                   pick_holdout=bool(pick_holdout))

    def default(self) -> float:
        """The grid's middle: the screening rate when nothing better is known."""
        return self.grid[(len(self.grid) - 1) // 2]

    def default_beta(self) -> float | None:
        """The beta grid's value nearest ``training.beta`` (on a log scale); None when the axis is off."""
        if self.betas is None:
            return None
        base = self.base_beta or 1.0
        return min(self.betas, key=lambda b: (abs(math.log(b / base)), b))

    def default_point(self) -> Point:
        """Where a reference starts its climb: the middle rate at the run's own beta."""
        return self.default(), self.default_beta()

    def points(self) -> list[Point]:
        """The whole grid: every rate at every beta (at beta None when the axis is off)."""
        return [(lr, b) for lr in self.grid for b in (self.betas or (None,))]

    @property
    def screens(self) -> bool:
        """Whether a candidate is screened at one point first (a margin and more than one point to climb over);
        otherwise every row gets the whole grid."""
        return self.screen_margin is not None and len(self.points()) > 1

    def screen_point(self, parent_points: list[Point], run_points: list[Point]) -> Point:
        """A candidate's screen: the rate as :meth:`screen_rate` picks it, and its parent's beta, else the run's
        most common, else the default beta."""
        rate = self.screen_rate([p[0] for p in parent_points], [p[0] for p in run_points])
        if self.betas is None:
            return rate, None
        for beta in [*(p[1] for p in parent_points), *(b for b, _ in Counter(p[1] for p in run_points).most_common(1))]:
            on_grid = next((g for g in self.betas if beta is not None and math.isclose(beta, g)), None)
            if on_grid is not None:
                return rate, on_grid
        return rate, self.default_beta()

    def screen_rate(self, parent_rates: list[float], run_rates: list[float]) -> float:
        """The grid point most likely to be a candidate's best: its parent's, else the run's most common."""
        for rate in [*parent_rates, *(r for r, _ in Counter(run_rates).most_common(1))]:
            if any(math.isclose(rate, g) for g in self.grid):
                return rate
        return self.default()

    def next_points(self, sweep: Sweep) -> list[Point]:
        """Untried grid neighbours of the best point so far, along the rate and then the beta axis (a failed
        point counts as tried): the climb's next step."""
        best = sweep.best_point()
        if best is None:
            return []
        (lr, beta), _ = best
        i = next(k for k, g in enumerate(self.grid) if math.isclose(g, lr))
        found: list[Point] = [(self.grid[k], beta) for k in (i - 1, i + 1) if 0 <= k < len(self.grid)]
        if self.betas is not None and beta is not None:
            j = next(k for k, g in enumerate(self.betas) if math.isclose(g, beta))
            found += [(lr, self.betas[k]) for k in (j - 1, j + 1) if 0 <= k < len(self.betas)]
        return [p for p in found if not sweep.tried(p)]

    def next_rates(self, sweep: Sweep) -> list[float]:
        """The rates of :meth:`next_points` (the climb's next step when the beta axis is off)."""
        return [lr for lr, _ in self.next_points(sweep)]

    def rank(self, reply: TrainReply) -> float:
        """The fitness a fine-tune at the chosen point ranks the row by (a race seed's as the first seed's): every
        scored prompt where tuning seeds choose the rate, else the odd-indexed half; with ``pick_holdout``, the
        selection half of those (:func:`holdout_halves`)."""
        if self.pick_holdout:
            return _halves_mean(self._ranking_prompts(reply), reply)[0]
        if self.tune_seeds > 0:
            return _mean_fitness(reply)
        return split_fitness(reply)[1]

    def pick(self, reply: TrainReply) -> float | None:
        """The fitness on the held-out half of the ranking prompts, which picks the finalists (None: no holdout)."""
        return _halves_mean(self._ranking_prompts(reply), reply)[1] if self.pick_holdout else None

    def _ranking_prompts(self, reply: TrainReply) -> list[float]:
        return self.ranking_values(_prompt_fitness(reply))

    def ranking_values(self, values: list[float]) -> list[float]:
        """Of one fine-tune's per-prompt fitness on the search prompts, those that rank rows: every prompt where
        tuning seeds choose the rate, else the odd-indexed half (the even half chose it)."""
        return values if self.tune_seeds > 0 else values[1::2]

    def unclimbed_values(self, values: list[float]) -> list[float]:
        """The search prompts that selection never ranked on (the pick half with ``pick_holdout``), else every
        ranking prompt: what a fine-tune on a pick seed is scored on (``search.pick_stage``)."""
        ranking = self.ranking_values(values)
        return holdout_halves(ranking)[1] if self.pick_holdout and len(ranking) >= 2 else ranking

    def worth_tuning(self, screen_fitness: float, best_fitness: float | None) -> bool:
        """Spend the rest of the grid only on a candidate whose screen is near the run's best."""
        if self.screen_margin is None or best_fitness is None:
            return True
        return screen_fitness >= best_fitness - self.screen_margin


def split_fitness(reply: TrainReply) -> tuple[float, float]:
    """(tune, rank): what chooses a grid point's rate and what ranks the row at it.

    A reply with tuning seeds (``tune_fitness``, ``training.tune_seeds`` > 0): their mean, and the job's own seed
    on every scored prompt. Otherwise one fine-tune's fitness on its even- and odd-indexed scored prompts.
    Per prompt the fitness is reward - kl_coef * KL, as the scorer computes its mean. Interleaving
    (rather than first half / second half) keeps both halves alike if the prompts come in an order.
    """
    if reply.tune_fitness is not None:
        return float(reply.tune_fitness), _mean_fitness(reply)
    values = _prompt_fitness(reply)
    if len(values) < 2:
        value = float(reply.fitness)
        return value, value
    tune, rank = values[0::2], values[1::2]
    return sum(tune) / len(tune), sum(rank) / len(rank)


def holdout_halves(values: list[float]) -> tuple[list[float], list[float]]:
    """(selection, pick): the ranking prompts interleaved into the half that ranks rows for selection and the half
    that picks the finalists (``selection.pick_holdout``).

    Selection that breeds from the top rows generation after generation fits the prompts it ranks on, and a pick
    made on the same prompts inherits that fit (docs/results.md §0, "why the feedback arm gains nothing over
    sampling"); a pick made on prompts selection never saw does not. Interleaved, as the tune/rank split is.
    """
    return values[0::2], values[1::2]


def _halves_mean(values: list[float], reply: TrainReply) -> tuple[float, float]:
    """The two halves' means (with fewer than two prompts, both the reported fitness)."""
    if len(values) < 2:
        value = float(reply.fitness)
        return value, value
    selection, pick = holdout_halves(values)
    return sum(selection) / len(selection), sum(pick) / len(pick)


def _prompt_fitness(reply: TrainReply) -> list[float]:
    rewards = reply.per_prompt
    kls = reply.per_prompt_kl or [0.0] * len(rewards)
    coef = float(reply.kl_coef or 0.0)
    return [float(r) - coef * float(k) for r, k in zip(rewards, kls, strict=True)]


def _mean_fitness(reply: TrainReply) -> float:
    """The fine-tune's fitness on every scored prompt (its reported fitness where it has no per-prompt scores)."""
    values = _prompt_fitness(reply)
    return sum(values) / len(values) if values else float(reply.fitness)


@dataclass
class Sweep:
    """One candidate's fine-tunes over the grid: fitness per point (learning rate, beta) and the chosen one."""

    results: dict[Point, TrainReply] = field(default_factory=dict)  # (lr, beta) -> the worker's train reply
    errors: dict[Point, tuple[str, str]] = field(default_factory=dict)  # (lr, beta) -> (stage, why it failed)
    cached: set[Point] = field(default_factory=set)  # points whose reply came from a result store (not run now)
    tuned: bool = False  # the whole grid, or a climb to a local maximum, was run (False: screened out or failed)
    evaluations: list[Any] = field(default_factory=list)  # archive.Evaluation per fine-tune, archived with the fate

    def add(self, lr: float, ok: bool, reply: TrainReply | None, stage: str, error: str | None,
            beta: float | None = None, cached: bool = False) -> None:
        """One fine-tune at (``lr``, ``beta``): its reply if ``ok``, else its failure."""
        if ok:
            if reply is None:
                raise ValueError(f"a successful fine-tune at rate {lr:g} without its reply")
            self.results[(lr, beta)] = reply
            (self.cached.add if cached else self.cached.discard)((lr, beta))
        else:
            self.errors[(lr, beta)] = (stage, error or "failed")

    def tried(self, point: Point) -> bool:
        """Whether this point was run (a failure counts)."""
        return any(math.isclose(point[0], lr) and (point[1] == beta or (
            point[1] is not None and beta is not None and math.isclose(point[1], beta)))
            for lr, beta in (*self.results, *self.errors))

    def rates(self) -> list[float]:
        """Every learning rate tried, at any beta (a failure counts), ascending."""
        return sorted({lr for lr, _ in (*self.results, *self.errors)})

    def best_point(self) -> tuple[Point, TrainReply] | None:
        """The point with the highest *tuning* fitness (ties: the smaller rate, the gentler update; then the
        smaller beta)."""
        if not self.results:
            return None
        return max(sorted(self.results.items(), key=lambda item: (item[0][0], item[0][1] or 0.0)),
                   key=lambda item: split_fitness(item[1])[0])

    def best(self) -> tuple[float, TrainReply] | None:
        """The chosen learning rate and its reply (:meth:`best_point` without the beta)."""
        best = self.best_point()
        return None if best is None else (best[0][0], best[1])

    def best_beta(self) -> float | None:
        """The chosen beta (None: the beta axis is off, or nothing succeeded)."""
        best = self.best_point()
        return None if best is None else best[0][1]

    def ranked_fitness(self) -> float | None:
        """The fitness that ranks the row: the held-apart half of the prompts, at the rate the other half chose
        (with tuning seeds: the job's own seed on every prompt, at the rate they chose)."""
        best = self.best()
        return None if best is None else split_fitness(best[1])[1]

    def summary(self, grid: tuple[float, ...], betas: tuple[float, ...] | None = None) -> dict[str, Any]:
        """What the archive keeps: per-rate fitness, failures, and whether the best sits on the grid's edge.

        With the beta axis on (``betas``), the per-rate fields are the slice at the chosen beta, and the row
        adds its ``beta``, the whole table (``beta_sweep``: beta -> rate -> tuning fitness, None where that
        fine-tune failed) and ``beta_at_edge``.
        """
        best = self.best_point()
        chosen, beta = best[0] if best else (None, None)

        def at_beta(items):  # the points at the chosen beta (all of them when the axis is off or none succeeded)
            return sorted(((lr, v) for (lr, b), v in items if b == beta or best is None), key=lambda item: item[0])

        out = {
            "learning_rate": chosen,
            "lr_tuned": self.tuned,
            # the tuning half's (or seeds') fitness per rate: what chose the rate (the row's fitness is the other's)
            "lr_sweep": {f"{lr:g}": round(split_fitness(d)[0], 6) for lr, d in at_beta(self.results.items())},
            "fitness_tune": None if best is None else round(split_fitness(best[1])[0], 6),
            # each rate's reward (the fitness's score), greedy accuracy and KL: the loss's reward-KL frontier
            "lr_points": {f"{lr:g}": {k: _rounded(getattr(d, k)) for k in ("reward", "greedy", "kl")}
                          for lr, d in at_beta(self.results.items())},
            "lr_errors": {f"{lr:g}": f"{stage}: {err}" for lr, (stage, err) in at_beta(self.errors.items())},
            # The optimum may lie beyond the grid: a user would widen it; the report says so.
            "lr_at_edge": bool(self.tuned and chosen is not None and len(grid) > 1
                               and (math.isclose(chosen, grid[0]) or math.isclose(chosen, grid[-1]))),
        }
        if betas is not None:
            table: dict[str, dict[str, float | None]] = {}
            for (lr, b), d in sorted([*self.results.items(), *((p, None) for p in self.errors)],
                                     key=lambda item: (item[0][1] or 0.0, item[0][0])):
                table.setdefault(f"{b:g}", {})[f"{lr:g}"] = None if d is None else round(split_fitness(d)[0], 6)
            out.update(beta=beta, beta_sweep=table,
                       beta_at_edge=bool(self.tuned and beta is not None and len(betas) > 1
                                         and (math.isclose(beta, betas[0]) or math.isclose(beta, betas[-1]))))
        return out


def _rounded(value: Any) -> float | None:
    return round(float(value), 6) if isinstance(value, int | float) and not isinstance(value, bool) else None
