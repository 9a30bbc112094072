"""``selection.pick_holdout``: selection ranks rows on one half of the ranking prompts, the finalists are ordered on
the other, so a loss that fits the prompts selection climbed is not the one sent to confirmation."""

from __future__ import annotations

import io
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console
from scripted_executor import ScriptedExecutor, ScriptedProposer, candidate, loss_name
from scripted_executor import config_with as config

from discopop.archive import Archive
from discopop.config import ConfigError, RunSettings, TrainingSettings
from discopop.config.compose import SAVED_CONFIG, compose, resolve_run, validate
from discopop.execution.executors import Job, JobResult
from discopop.execution.messages import TrainReply
from discopop.fitness.tuning import LrProtocol, holdout_halves
from discopop.report.display import Display
from discopop.report.terminal_board import print_leaderboard
from discopop.search.confirmation import top_candidates
from discopop.search.loop import Loop

VALUES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


def _reply(values: list[float], tune_fitness: float | None = None) -> TrainReply:
    mean = sum(values) / len(values)
    return TrainReply(fitness=mean, reward=mean, kl=0.0, steps=1, per_prompt=tuple(values),
                      per_prompt_kl=(0.0,) * len(values), kl_coef=0.0, tune_fitness=tune_fitness)


def _protocol(tune_seeds: int, holdout: bool) -> LrProtocol:
    return LrProtocol.from_config(TrainingSettings(lr_grid=[1e-5], tune_seeds=tune_seeds), pick_holdout=holdout)


def test_the_ranking_prompts_are_split_into_two_disjoint_interleaved_halves() -> None:
    assert holdout_halves(VALUES) == (VALUES[0::2], VALUES[1::2])
    # no tuning seeds: the odd-indexed prompts rank (0.2, 0.4, 0.6, 0.8); selection takes 0.2, 0.6, the pick 0.4, 0.8
    on = _protocol(0, True)
    assert on.rank(_reply(VALUES)) == pytest.approx(0.4) and on.pick(_reply(VALUES)) == pytest.approx(0.6)
    # tuning seeds: every prompt ranks; selection takes the even-indexed, the pick the odd-indexed
    seeded = _protocol(3, True)
    assert seeded.rank(_reply(VALUES, 0.9)) == pytest.approx(0.4)
    assert seeded.pick(_reply(VALUES, 0.9)) == pytest.approx(0.5)


def test_off_nothing_changes_and_there_is_no_pick() -> None:
    assert _protocol(0, False).rank(_reply(VALUES)) == pytest.approx(0.5)  # the odd half, as before
    assert _protocol(3, False).rank(_reply(VALUES, 0.9)) == pytest.approx(0.45)  # every prompt
    assert _protocol(0, False).pick(_reply(VALUES)) is None
    assert LrProtocol.from_config(TrainingSettings()).pick_holdout is False


def test_a_bad_value_is_a_one_line_error() -> None:
    cfg, _ = compose([])
    assert cfg["selection"]["pick_holdout"] is False  # off by default
    cfg["selection"]["pick_holdout"] = "sometimes"
    with pytest.raises(ConfigError, match=r"selection\.pick_holdout: .*not a valid bool") as err:
        RunSettings.coerce(cfg).check()
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"selection\.pick_holdout") as err:
        validate(compose(["selection.pick_holdout=[1]"])[0])
    assert "\n" not in str(err.value)


def test_on_by_default_on_the_fast_tier_only_and_an_older_fast_tier_run_keeps_its_own(tmp_path: Path) -> None:
    assert compose(["task=diagnostic"])[0]["selection"]["pick_holdout"] is True
    assert compose(["task=diagnostic", "selection.pick_holdout=false"])[0]["selection"]["pick_holdout"] is False
    assert compose(["task=addition"])[0]["selection"]["pick_holdout"] is False
    # a fast-tier run recorded before the key existed resumes without it: one ranking, as it was measured
    cfg, _ = compose(["task=diagnostic", "wandb.mode=disabled"])
    del cfg["selection"]["pick_holdout"]
    run_dir = tmp_path / "old"
    (run_dir / SAVED_CONFIG).parent.mkdir(parents=True)
    (run_dir / SAVED_CONFIG).write_text(yaml.safe_dump(cfg))
    Archive(run_dir / "archive.sqlite").close()
    settings, _ = resolve_run(None, str(run_dir), [])
    assert settings.selection.pick_holdout is False


class HalvesExecutor(ScriptedExecutor):
    """A scripted executor that adds ``shifts[name] = (selection, pick)`` to the prompts of each half (no tuning
    seeds: prompt i ranks when odd; i % 4 == 1 is the selection half, i % 4 == 3 the pick half)."""

    def __init__(self, shifts: dict[str, tuple[float, float]], **kwargs: Any):
        super().__init__(**kwargs)
        self.shifts = shifts

    def answer(self, job: Job) -> JobResult:
        result = super().answer(job)
        if job.stage != "train" or not result.ok:
            return result
        selection, pick = self.shifts.get(loss_name(job.code), (0.0, 0.0))
        shift = {1: selection, 3: pick}
        values = [v + shift.get(i % 4, 0.0) for i, v in enumerate(result.trained.per_prompt)]
        mean = sum(values) / len(values)
        result.reply = replace(result.trained, per_prompt=values, fitness=mean, reward=mean)
        return result


def _run(tmp_path: Path, holdout: bool) -> Archive:
    cfg, _ = compose(["baselines=[dpo]", "training.lr_grid=[1e-5,2e-5]", "confirm.seeds=0", "wandb.mode=disabled",
                      "selection.max_seeds=2"])
    cfg = config(cfg, selection__pick_holdout=holdout)
    # "climber" leads on the prompts selection ranks on and trails on the others; "honest" is level on both
    executor = HalvesExecutor({"climber": (0.08, -0.06), "honest": (0.0, 0.0)}, prompts={"search": 16, "confirm": 8})
    display = Display(0, console=Console(file=io.StringIO(), width=200), quiet=True)
    run_dir = tmp_path / ("on" if holdout else "off")
    run_dir.mkdir()
    loop = Loop(RunSettings.coerce(cfg), run_dir, display, executor=executor,
                proposer=ScriptedProposer({1: [candidate("climber"), candidate("honest")]}),
                task_meta={"sft_heldout_reward": 0.4, "pairs": 64})
    try:
        loop.run(1)
    finally:
        loop.archive.close()
    return Archive(run_dir / "archive.sqlite", create=False)


def _board(archive: Archive) -> str:
    out = io.StringIO()
    print_leaderboard(archive, Console(file=out, width=400))
    return " ".join(out.getvalue().split())


def test_selection_ranks_on_one_half_and_the_finalists_are_ordered_on_the_other(tmp_path: Path) -> None:
    archive = _run(tmp_path, holdout=True)
    try:
        rows = {r.name: r for r in archive.rows()}
        climber, honest = rows["climber"], rows["honest"]
        assert climber.fitness > honest.fitness  # selection sees the climber's lead...
        assert [r.name for r in top_candidates(archive, 1)] == ["honest"]  # ...the pick does not
        for row in (climber, honest, rows["dpo"]):
            pick = row.metrics["pick"]
            assert pick["seeds"] == row.metrics["race"]["seeds"] and len(pick["fitness"]) == 2  # one per race seed
            by_seed = {ev.seed: ev for ev in archive.evaluations(row.id, split="search") if ev.ok
                       and math.isclose(ev.learning_rate, row.metrics["learning_rate"])}
            for seed, value, picked in zip(pick["seeds"], row.metrics["race"]["fitness"], pick["fitness"], strict=True):
                selection_half, pick_half = holdout_halves(by_seed[seed].per_prompt_fitness()[1::2])
                assert value == pytest.approx(sum(selection_half) / len(selection_half))
                assert picked == pytest.approx(sum(pick_half) / len(pick_half))
            assert row.fitness == pytest.approx(row.metrics["race"]["fitness"][0])  # the run seed's selection half
        assert "finalists were ordered on the other half (selection.pick_holdout)" in _board(archive)
    finally:
        archive.close()


def test_off_the_finalists_are_ordered_by_search_fitness_and_no_pick_is_written(tmp_path: Path) -> None:
    archive = _run(tmp_path, holdout=False)
    try:
        rows = {r.name: r for r in archive.rows()}
        assert "pick" not in rows["climber"].metrics and "pick" not in rows["dpo"].metrics
        assert rows["climber"].fitness > rows["honest"].fitness  # +0.01 on the whole ranking half
        assert [r.name for r in top_candidates(archive, 1)] == ["climber"]
        assert "the rank that selection and confirmation use" in _board(archive)
    finally:
        archive.close()
