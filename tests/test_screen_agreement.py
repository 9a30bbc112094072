"""The run's own record of its rate screen (``search.screen_agreement``): which value it judged, whom it counts."""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console
from scripted_executor import Script, ScriptedExecutor, ScriptedProposer, candidate, config_with

from discopop.archive import Evaluation, Row
from discopop.config import RunSettings
from discopop.config.compose import compose
from discopop.report.display import Display
from discopop.search.events import EventLog, ScreenMeasured
from discopop.search.loop import Loop
from discopop.search.screen_agreement import MIN_ROWS, ScreenAgreement, screen_agreement

SCREEN, OTHER = 4e-05, 2e-05  # the sweep lists rates in order, so the screen is not its first entry


def _row(row_id: int, fitness: float, sweep: dict[float, float], *, proposer: str = "evolution",
         tuned: bool = True, status: str = "scored") -> Row:
    metrics = {"lr_sweep": {f"{rate:g}": value for rate, value in sorted(sweep.items())}, "lr_tuned": tuned}
    return Row(row_id, 1, [], proposer, f"loss_{row_id}", "", "", "", status, None, fitness, metrics, "", None)


def _runs(row_id: int, rates: list[float]) -> list[Evaluation]:
    return [Evaluation(candidate_id=row_id, seed=0, split="search", learning_rate=rate, fitness=0.5)
            for rate in rates]


def test_the_screen_is_the_first_rate_a_row_was_trained_at() -> None:
    """The screen values rank the rows as their fitness does, the other rate's values in reverse: rho is +1 only if
    the value is read at the first search run's rate."""
    rows, runs = [], []
    for i in range(MIN_ROWS + 2):
        rows.append(_row(i, fitness=0.5 + 0.01 * i, sweep={SCREEN: 0.4 + 0.01 * i, OTHER: 0.9 - 0.01 * i}))
        runs += _runs(i, [SCREEN, OTHER])
    record = screen_agreement(rows, runs)
    assert record.agreement is not None and record.agreement.rho == 1.0
    assert record.agreement.n == MIN_ROWS + 2
    assert "below" not in record.describe(0.5)


def test_stopped_rows_count_but_do_not_measure_and_references_measure_but_do_not_count() -> None:
    rows, runs = [], []
    for i in range(MIN_ROWS):  # references: climbed, in the agreement, not in the screened count
        rows.append(_row(i, 0.5 + 0.01 * i, {SCREEN: 0.5 + 0.01 * i, OTHER: 0.4}, proposer="reference"))
        runs += _runs(i, [SCREEN, OTHER])
    rows.append(_row(100, 0.3, {SCREEN: 0.3}, tuned=False))  # stopped at its screen
    runs += _runs(100, [SCREEN])
    rows.append(_row(101, 0.7, {SCREEN: 0.69, OTHER: 0.7}))  # climbed
    runs += _runs(101, [SCREEN, OTHER])
    rows.append(_row(102, 0.9, {SCREEN: 0.9, OTHER: 0.1}, status="proposed"))  # unfinished: not counted at all
    runs += _runs(102, [SCREEN, OTHER])
    record = screen_agreement(rows, [*runs, Evaluation(candidate_id=101, seed=0, split="confirm",
                                                       learning_rate=OTHER, fitness=0.1)])
    assert (record.screened, record.stopped) == (2, 1)
    assert record.agreement is not None and record.agreement.n == MIN_ROWS + 1
    assert record.describe(0.5).startswith("rate screen: 1 of 2 candidate(s) stopped")


def _screen_against_the_protocol() -> ScreenAgreement:
    """24 climbed rows whose screens rank them exactly against their fitness (rho -1)."""
    rows, runs = [], []
    for i in range(3 * MIN_ROWS):
        rows.append(_row(i, 0.5 + 0.01 * i, {SCREEN: 0.9 - 0.01 * i, OTHER: 0.5 + 0.01 * i}))
        runs += _runs(i, [SCREEN, OTHER])
    return screen_agreement(rows, runs)


def test_a_screen_that_ranks_against_the_protocol_is_flagged() -> None:
    record = _screen_against_the_protocol()
    assert record.agreement is not None and record.agreement.rho == -1.0
    line = record.describe(0.5)
    assert "lower bound is below 0.5" in line and "lr_screen_margin=null" in line


def test_too_few_climbed_rows_give_counts_only() -> None:
    rows = [_row(i, 0.5 + 0.01 * i, {SCREEN: 0.5, OTHER: 0.5 + 0.01 * i}) for i in range(MIN_ROWS - 1)]
    runs = [r for i in range(MIN_ROWS - 1) for r in _runs(i, [SCREEN, OTHER])]
    record = screen_agreement(rows, runs)
    assert record.agreement is None and record.screened == MIN_ROWS - 1
    assert "Spearman" not in record.describe(0.5)


def test_a_failed_first_run_is_skipped_for_the_first_that_scored() -> None:
    """A first run that failed has no value in the sweep; the next one that scored is the row's screen."""
    rows, runs = [], []
    for i in range(MIN_ROWS):
        rows.append(_row(i, 0.5 + 0.01 * i, {SCREEN: 0.5 + 0.01 * i, OTHER: 0.6 - 0.01 * i}))
        runs.append(Evaluation(candidate_id=i, seed=0, split="search", learning_rate=OTHER, error="train: boom"))
        runs += _runs(i, [SCREEN])
    record = screen_agreement(rows, runs)
    assert record.agreement is not None and math.isclose(record.agreement.rho, 1.0)


def _scripted_run(tmp_path: Path, *overrides: str) -> list[str]:
    """A scripted 3-generation run (in this process, no worker): what it said of its screen."""
    cfg, _ = compose(["baselines=[dpo,lrml]", "training.lr_grid=[1e-5,2e-5,4e-5]", "confirm.seeds=0",
                      "wandb.mode=disabled", "selection.max_seeds=1", "selection.reference_store=false", "seed=3",
                      *overrides])
    scripts = {"a": Script(fitness={2e-5: 0.9, 4e-5: 0.95}), "b": Script(fitness=0.93),
               "c": Script(fitness=0.7)}  # c's screen is 0.25 below the best: the screen stops it
    proposer = ScriptedProposer({1: [candidate("a")], 2: [candidate("b")], 3: [candidate("c")]})
    log = EventLog()
    tmp_path.mkdir(parents=True)
    loop = Loop(RunSettings.coerce(config_with(cfg, candidates_per_generation=1)), tmp_path, log,
                executor=ScriptedExecutor(scripts, workers=1), proposer=proposer,
                task_meta={"sft_heldout_reward": 0.8, "pairs": 64})
    try:
        loop.run(3)
    finally:
        loop.archive.close()
    return [e.record.describe(e.min_rho_lower) for e in log.of(ScreenMeasured)]


def test_a_run_says_how_its_screen_did(tmp_path: Path) -> None:
    assert _scripted_run(tmp_path / "on") == ["rate screen: 1 of 3 candidate(s) stopped at their screen (one "
                                              "fine-tune)"]
    assert _scripted_run(tmp_path / "off", "training.lr_screen_margin=null") == []  # no screen, nothing to say


def test_the_terminal_flags_a_screen_not_shown_and_wandb_keeps_the_numbers() -> None:
    record = _screen_against_the_protocol()
    for bound, colour in ((0.5, "yellow"), (-1.0, None)):
        console = Console(record=True, width=400, force_terminal=True, color_system="standard", highlight=False)
        Display(1, console=console, quiet=True).show(ScreenMeasured(record, bound))
        text = console.export_text(styles=True)
        assert "Spearman -1.00" in text and ("\x1b[33m" in text) == (colour == "yellow")
    assert record.summary() == {"screen/screened": 3 * MIN_ROWS, "screen/stopped": 0, "screen/rows": 3 * MIN_ROWS,
                                "screen/rho": -1.0, "screen/rho_lower": record.agreement.lower,
                                "screen/rho_upper": record.agreement.upper}


def test_rows_on_the_beta_axis_are_left_out() -> None:
    """With several betas the sweep is the chosen beta's, and the screen's beta is not archived: no value."""
    rows, runs = [], []
    for i in range(MIN_ROWS):
        row = _row(i, 0.5 + 0.01 * i, {SCREEN: 0.5 + 0.01 * i, OTHER: 0.4})
        row.metrics["beta_sweep"] = {"0.25": {"4e-05": 0.3}, "0.5": {"4e-05": 0.5 + 0.01 * i}}
        rows.append(row)
        runs += _runs(i, [SCREEN, OTHER])
    record = screen_agreement(rows, runs)
    assert (record.screened, record.agreement) == (0, None)
