"""The fair learning-rate protocol: which rates a loss is trained at and which result stands."""

from __future__ import annotations

import pytest

from discopop.fitness.tuning import LrProtocol, Sweep

GRID = {"learning_rate": 1e-5, "lr_grid": [1e-5, 2.5e-6, 5e-6], "lr_screen_margin": 0.05}


def test_grid_is_sorted_and_default_is_its_middle() -> None:
    protocol = LrProtocol.from_config(GRID)
    assert protocol.grid == (2.5e-6, 5e-6, 1e-5)
    assert protocol.default() == 5e-6


def test_without_a_grid_the_single_learning_rate_is_the_grid() -> None:
    protocol = LrProtocol.from_config({"learning_rate": 3e-6, "lr_grid": None})
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
    protocol = LrProtocol.from_config({**GRID, "lr_screen_margin": None})
    assert protocol.worth_tuning(0.0, 1.0)


def test_sweep_keeps_the_best_rate_and_reports_failures_and_edges() -> None:
    grid = (2.5e-6, 5e-6, 1e-5)
    sweep = Sweep(tuned=True)
    sweep.add(2.5e-6, True, {"fitness": 0.91}, "train", None)
    sweep.add(5e-6, True, {"fitness": 0.93}, "train", None)
    sweep.add(1e-5, False, {}, "train", "non-finite loss at step 3")
    rate, data = sweep.best()
    assert (rate, data["fitness"]) == (5e-6, 0.93)
    summary = sweep.summary(grid)
    assert summary["learning_rate"] == 5e-6 and summary["lr_tuned"] is True
    assert summary["lr_sweep"] == {"2.5e-06": 0.91, "5e-06": 0.93}
    assert summary["lr_errors"] == {"1e-05": "train: non-finite loss at step 3"}
    assert summary["lr_at_edge"] is False
    edge = Sweep(tuned=True)
    edge.add(1e-5, True, {"fitness": 0.5}, "train", None)
    assert edge.summary(grid)["lr_at_edge"] is True


def test_ties_go_to_the_smaller_rate() -> None:
    sweep = Sweep()
    sweep.add(1e-5, True, {"fitness": 0.9}, "train", None)
    sweep.add(2.5e-6, True, {"fitness": 0.9}, "train", None)
    assert sweep.best()[0] == 2.5e-6


def test_a_sweep_with_no_success_has_no_best() -> None:
    sweep = Sweep()
    sweep.add(1e-5, False, {}, "score", "non-finite score")
    assert sweep.best() is None


def test_the_climb_tries_neighbours_of_the_best_until_neither_improves() -> None:
    protocol = LrProtocol.from_config({"learning_rate": 1e-5, "lr_grid": [1e-6, 2e-6, 4e-6, 8e-6, 1.6e-5]})
    sweep = Sweep()
    sweep.add(4e-6, True, {"fitness": 0.80}, "train", None)
    assert protocol.next_rates(sweep) == [2e-6, 8e-6]
    sweep.add(2e-6, True, {"fitness": 0.70}, "train", None)
    sweep.add(8e-6, True, {"fitness": 0.85}, "train", None)
    assert protocol.next_rates(sweep) == [1.6e-5]
    sweep.add(1.6e-5, False, {}, "train", "non-finite loss at step 9")  # a failed rate counts as tried
    assert protocol.next_rates(sweep) == []
    assert sweep.best()[0] == 8e-6


def test_the_climb_stops_at_once_when_nothing_succeeded() -> None:
    protocol = LrProtocol.from_config(GRID)
    sweep = Sweep()
    sweep.add(5e-6, False, {}, "train", "boom")
    assert protocol.next_rates(sweep) == []
