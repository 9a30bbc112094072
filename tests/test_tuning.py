"""The fair learning-rate protocol: which rates a loss is trained at and which result stands."""

from __future__ import annotations

from dataclasses import replace

import pytest
from scripted_executor import scored

from discopop.config import TrainingSettings
from discopop.execution.messages import TrainReply
from discopop.fitness.tuning import LrProtocol, Sweep, split_fitness

GRID = TrainingSettings(learning_rate=1e-5, lr_grid=[1e-5, 2.5e-6, 5e-6], lr_screen_margin=0.05)


def test_grid_is_sorted_and_default_is_its_middle() -> None:
    protocol = LrProtocol.from_config(GRID)
    assert protocol.grid == (2.5e-6, 5e-6, 1e-5)
    assert protocol.default() == 5e-6


def test_without_a_grid_the_single_learning_rate_is_the_grid() -> None:
    protocol = LrProtocol.from_config(TrainingSettings(learning_rate=3e-6, lr_grid=None))
    assert protocol.grid == (3e-6,)


def test_screen_rate_prefers_the_parent_then_the_run_then_the_middle() -> None:
    protocol = LrProtocol.from_config(GRID)
    assert protocol.screen_rate([1e-5], [2.5e-6, 2.5e-6]) == 1e-5
    assert protocol.screen_rate([], [2.5e-6, 2.5e-6, 1e-5]) == 2.5e-6
    assert protocol.screen_rate([7e-6], []) == 5e-6  # a rate off the grid (older run) is ignored


@pytest.mark.parametrize(("screen", "best", "expected"), [(0.90, 0.94, True), (0.88, 0.94, False), (0.5, None, True)])
def test_only_candidates_near_the_best_get_the_rest_of_the_grid(screen, best, expected) -> None:
    assert LrProtocol.from_config(GRID).worth_tuning(screen, best) is expected


def test_no_margin_means_every_candidate_is_tuned() -> None:
    protocol = LrProtocol.from_config(replace(GRID, lr_screen_margin=None))
    assert protocol.worth_tuning(0.0, 1.0)


def test_sweep_keeps_the_best_rate_and_reports_failures_and_edges() -> None:
    grid = (2.5e-6, 5e-6, 1e-5)
    sweep = Sweep(tuned=True)
    sweep.add(2.5e-6, True, scored(0.91), "train", None)
    sweep.add(5e-6, True, scored(0.93), "train", None)
    sweep.add(1e-5, False, None, "train", "non-finite loss at step 3")
    rate, data = sweep.best()
    assert (rate, data.fitness) == (5e-6, 0.93)
    summary = sweep.summary(grid)
    assert summary["learning_rate"] == 5e-6 and summary["lr_tuned"] is True
    assert summary["lr_sweep"] == {"2.5e-06": 0.91, "5e-06": 0.93}
    assert summary["lr_errors"] == {"1e-05": "train: non-finite loss at step 3"}
    assert summary["lr_at_edge"] is False
    edge = Sweep(tuned=True)
    edge.add(1e-5, True, scored(0.5), "train", None)
    assert edge.summary(grid)["lr_at_edge"] is True


def test_ties_go_to_the_smaller_rate() -> None:
    sweep = Sweep()
    sweep.add(1e-5, True, scored(0.9), "train", None)
    sweep.add(2.5e-6, True, scored(0.9), "train", None)
    assert sweep.best()[0] == 2.5e-6


def test_a_sweep_with_no_success_has_no_best() -> None:
    sweep = Sweep()
    sweep.add(1e-5, False, None, "score", "non-finite score")
    assert sweep.best() is None


def test_the_climb_tries_neighbours_of_the_best_until_neither_improves() -> None:
    protocol = LrProtocol.from_config(TrainingSettings(learning_rate=1e-5, lr_grid=[1e-6, 2e-6, 4e-6, 8e-6, 1.6e-5]))
    sweep = Sweep()
    sweep.add(4e-6, True, scored(0.80), "train", None)
    assert protocol.next_rates(sweep) == [2e-6, 8e-6]
    sweep.add(2e-6, True, scored(0.70), "train", None)
    sweep.add(8e-6, True, scored(0.85), "train", None)
    assert protocol.next_rates(sweep) == [1.6e-5]
    sweep.add(1.6e-5, False, None, "train", "non-finite loss at step 9")  # a failed rate counts as tried
    assert protocol.next_rates(sweep) == []
    assert sweep.best()[0] == 8e-6


def test_the_climb_stops_at_once_when_nothing_succeeded() -> None:
    protocol = LrProtocol.from_config(GRID)
    sweep = Sweep()
    sweep.add(5e-6, False, None, "train", "boom")
    assert protocol.next_rates(sweep) == []


def _reply(per_prompt: list[float], kls: list[float] | None = None, kl_coef: float = 0.0) -> TrainReply:
    n = len(per_prompt)
    kls = kls or [0.0] * n
    fitness = sum(r - kl_coef * k for r, k in zip(per_prompt, kls, strict=True)) / n
    return TrainReply(fitness=fitness, reward=fitness, kl=0.0, steps=4, per_prompt=per_prompt, per_prompt_kl=kls,
                      kl_coef=kl_coef)


def test_split_fitness_interleaves_prompts_and_charges_kl_per_prompt() -> None:
    tune, rank = split_fitness(_reply([1.0, 0.0, 1.0, 0.0], [0.0, 0.5, 1.0, 0.5], kl_coef=0.2))
    assert tune == pytest.approx((1.0 + 0.8) / 2) and rank == pytest.approx((-0.1 - 0.1) / 2)
    assert split_fitness(scored(0.7)) == (0.7, 0.7)  # no per-prompt scores: both halves are the fitness


def test_the_rate_is_chosen_on_one_half_and_the_row_ranked_on_the_other() -> None:
    # 1e-5 looks best on the tuning half only: it is chosen, and its ranking-half fitness (not the best of
    # the ranking halves, 0.9 at 5e-6) is the row's fitness, so trying more rates cannot inflate a row.
    sweep = Sweep()
    sweep.add(5e-6, True, _reply([0.5, 0.9, 0.5, 0.9]), "train", None)
    sweep.add(1e-5, True, _reply([0.8, 0.6, 0.8, 0.6]), "train", None)
    assert sweep.best()[0] == 1e-5
    assert sweep.ranked_fitness() == pytest.approx(0.6)
    summary = sweep.summary((5e-6, 1e-5))
    assert summary["lr_sweep"] == {"5e-06": 0.5, "1e-05": 0.8} and summary["fitness_tune"] == 0.8
