"""``selection.pick_seeds``: the finalists are chosen among the best rows by their mean on seeds selection never
trained on, so a loss that led only on the fine-tunes selection climbed is not the one sent to confirmation."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import benchmark_script
from rich.console import Console
from scripted_executor import Script, ScriptedExecutor, ScriptedProposer, candidate, loss_name
from scripted_executor import config_with as config

from discopop.archive import Archive
from discopop.config import ConfigError, RunSettings
from discopop.config.compose import SAVED_CONFIG, compose, resolve_run, validate
from discopop.execution.executors import Job, JobResult
from discopop.report.display import Display
from discopop.report.terminal_board import print_leaderboard
from discopop.search.confirmation import best_references, top_candidates
from discopop.search.loop import Loop
from discopop.search.pick_stage import RETIRED, SPLIT, pick_seeds

PICK = pick_seeds(0, 2)  # the run seed is 0: pick seeds 3000 and 3001
LUCKY = Script(fitness=0.60, seed_shift={seed: -0.20 for seed in PICK})  # leads wherever selection trained it
STEADY = Script(fitness=0.56)


class FragileOnPickSeeds(ScriptedExecutor):
    """Fails every fine-tune of the losses in ``fragile`` on a pick seed (and only there)."""

    def __init__(self, fragile: set[str], **kwargs: Any):
        super().__init__(**kwargs)
        self.fragile = fragile

    def answer(self, job: Job) -> JobResult:
        if job.stage == "train" and job.seed in PICK and loss_name(job.code) in self.fragile:
            return JobResult(job, False, "train", "diverged", seconds=0.001)
        return super().answer(job)


def _settings(**changes: Any) -> RunSettings:
    cfg, _ = compose(["baselines=[dpo]", "training.lr_grid=[1e-5]", "confirm.seeds=2", "confirm.top_k=1",
                      "wandb.mode=disabled", "selection.max_seeds=1", "selection.pick_holdout=true"])
    return RunSettings.coerce(config(cfg, **changes))


def _run(run_dir: Path, settings: RunSettings, executor: ScriptedExecutor, generations: dict[int, list],
         upto: int = 1) -> Archive:
    run_dir.mkdir(exist_ok=True)
    display = Display(0, console=Console(file=io.StringIO(), width=200), quiet=True)
    loop = Loop(settings, run_dir, display, executor=executor, proposer=ScriptedProposer(generations),
                task_meta={"sft_heldout_reward": 0.4, "pairs": 64})
    try:
        loop.run(upto)
    finally:
        loop.archive.close()
    return Archive(run_dir / "archive.sqlite", create=False)


def _rows(archive: Archive) -> dict[str, Any]:
    return {r.name: r for r in archive.rows()}


def _executor(**kwargs: Any) -> ScriptedExecutor:
    return ScriptedExecutor({"lucky": LUCKY, "steady": STEADY}, prompts={"search": 16, "confirm": 8}, **kwargs)


@pytest.mark.parametrize("n_seeds", [2, 0])
def test_a_loss_that_led_only_on_the_seeds_selection_trained_on_is_not_the_finalist(tmp_path: Path,
                                                                                    n_seeds: int) -> None:
    executor = _executor()
    archive = _run(tmp_path / "run", _settings(selection__pick_seeds=n_seeds, selection__pick_pool=2), executor,
                   {1: [candidate("lucky"), candidate("steady")]})
    try:
        rows = _rows(archive)
        assert rows["lucky"].fitness > rows["steady"].fitness  # selection sees the lucky seed's lead
        finalist = "steady" if n_seeds else "lucky"
        assert [r.name for r in top_candidates(archive, 1)] == [finalist]
        assert "confirmation" in rows[finalist].metrics and "confirmation" not in rows[
            "steady" if finalist == "lucky" else "lucky"].metrics
        pick_jobs = [j for j in executor.jobs("train") if j.seed in PICK]
        if n_seeds == 0:
            assert not pick_jobs and all("pick_stage" not in r.metrics for r in rows.values())
            return
        # both candidates, each pick seed once, at the row's own rate; the one reference is confirmed anyway
        assert sorted((loss_name(j.code), j.seed, j.split) for j in pick_jobs) == [
            (name, seed, "search") for name in ("lucky", "steady") for seed in PICK]
        assert "pick_stage" not in rows["dpo"].metrics
        assert top_candidates(archive, 1, pick_stage=False)[0].name == "lucky"  # the pool's own order is selection's
    finally:
        archive.close()


def test_the_search_benchmarks_pick_is_the_runs_first_finalist_not_selections_leader(tmp_path: Path) -> None:
    settings = _settings(selection__pick_seeds=2, selection__pick_pool=2, confirm__top_k=2)
    archive = _run(tmp_path / "run", settings, _executor(), {1: [candidate("lucky"), candidate("steady")]})
    try:
        assert all("confirmation" in r.metrics for r in archive.rows())  # both finalists confirmed
        assert benchmark_script("search_efficiency").search_pick(archive, 2)["name"] == "steady"
    finally:
        archive.close()


def test_each_pick_seed_is_scored_on_the_search_prompts_selection_never_ranked_on(tmp_path: Path) -> None:
    archive = _run(tmp_path / "run", _settings(selection__pick_seeds=2, selection__pick_pool=2), _executor(),
                   {1: [candidate("lucky"), candidate("steady")]})
    try:
        for name in ("lucky", "steady"):
            row = _rows(archive)[name]
            stage = row.metrics["pick_stage"]
            runs = {ev.seed: ev for ev in archive.evaluations(row.id, split=SPLIT)}
            assert stage["seeds"] == PICK and sorted(runs) == PICK and stage["failed"] is None
            # no tuning seeds: the odd-indexed prompts rank, and selection ranks on every other one of those
            expected = [sum(v := runs[s].per_prompt_fitness()[1::2][1::2]) / len(v) for s in PICK]
            assert stage["fitness"] == pytest.approx(expected)
            assert stage["mean"] == pytest.approx(sum(expected) / 2)
        board = io.StringIO()
        print_leaderboard(archive, Console(file=board, width=400))
        assert "chosen among the 2 best rows by their mean on 2 seeds selection never trained on" in " ".join(
            board.getvalue().split())
    finally:
        archive.close()


def test_a_row_that_fails_a_pick_seed_goes_last_and_is_not_a_finalist(tmp_path: Path) -> None:
    executor = FragileOnPickSeeds({"lucky"}, scripts={"lucky": Script(fitness=0.60), "steady": STEADY},
                                  prompts={"search": 16, "confirm": 8})
    archive = _run(tmp_path / "run", _settings(selection__pick_seeds=2, selection__pick_pool=2), executor,
                   {1: [candidate("lucky"), candidate("steady")]})
    try:
        stage = _rows(archive)["lucky"].metrics["pick_stage"]
        assert stage["mean"] is None and stage["failed"].startswith("seed 3000 failed: train: diverged")
        assert [r.name for r in top_candidates(archive, 2)] == ["steady", "lucky"]
    finally:
        archive.close()


def test_with_fewer_baselines_confirmed_than_scored_the_references_are_ordered_on_the_pick_seeds_too(
        tmp_path: Path) -> None:
    # ipo leads dpo where selection trained them and trails on the pick seeds; one baseline besides DPO is confirmed
    executor = _executor()
    executor.scripts.update(ipo=Script(fitness=0.58, seed_shift={seed: -0.3 for seed in PICK}), dpo=Script(0.5),
                            hinge=Script(0.52))
    settings = _settings(baselines=["dpo", "ipo", "hinge"], confirm__references=1, selection__pick_seeds=2,
                         selection__pick_pool=2)
    archive = _run(tmp_path / "run", settings, executor, {1: [candidate("lucky"), candidate("steady")]})
    try:
        assert best_references(archive, 1, pick_stage=False)[0].name == "ipo"
        assert best_references(archive, 1)[0].name == "hinge"
        assert all("pick_stage" in r.metrics for r in archive.rows_by_proposer("reference"))
        assert "confirmation" not in _rows(archive)["ipo"].metrics and "confirmation" in _rows(archive)["hinge"].metrics
    finally:
        archive.close()


def test_a_longer_run_trains_only_what_its_pool_lacks_and_retires_what_left_the_pool(tmp_path: Path) -> None:
    settings = _settings(selection__pick_seeds=2, selection__pick_pool=1)
    generations = {1: [candidate("steady")], 2: [candidate("better")]}
    first = _executor()
    _run(tmp_path / "run", settings, first, generations).close()
    longer = _executor()
    longer.scripts["better"] = Script(fitness=0.7)
    archive = _run(tmp_path / "run", settings, longer, generations, upto=2)
    try:
        rows = _rows(archive)
        assert "pick_stage" not in rows["steady"].metrics and rows["steady"].metrics[RETIRED]["seeds"] == PICK
        assert rows["better"].metrics["pick_stage"]["mean"] is not None
        assert sorted(loss_name(j.code) for j in longer.jobs("train") if j.seed in PICK) == ["better", "better"]
        again = _executor()
        again.scripts["better"] = Script(fitness=0.7)
        _run(tmp_path / "run", settings, again, generations, upto=2).close()  # resumed at its end: nothing new
        assert not [j for j in again.jobs("train") if j.seed in PICK]
    finally:
        archive.close()


@pytest.mark.parametrize(("key", "value"), [("pick_seeds", -1), ("pick_seeds", 101), ("pick_pool", 0)])
def test_a_bad_value_is_a_one_line_error(key: str, value: int) -> None:
    with pytest.raises(ConfigError, match=rf"selection\.{key} must be") as err:
        validate(compose([f"selection.{key}={value}"])[0])
    assert "\n" not in str(err.value)


def test_on_by_default_on_the_fast_tier_only_and_an_older_fast_tier_run_keeps_its_own(tmp_path: Path) -> None:
    cfg, _ = compose([])
    assert cfg["selection"]["pick_seeds"] == 0 and cfg["selection"]["pick_pool"] == 15
    assert compose(["task=diagnostic"])[0]["selection"]["pick_seeds"] == 3
    assert compose(["task=diagnostic", "selection.pick_seeds=0"])[0]["selection"]["pick_seeds"] == 0
    # a fast-tier run recorded before the key existed resumes without it: its finalists chosen as they were
    cfg, _ = compose(["task=diagnostic", "wandb.mode=disabled"])
    del cfg["selection"]["pick_seeds"], cfg["selection"]["pick_pool"]
    run_dir = tmp_path / "old"
    (run_dir / SAVED_CONFIG).parent.mkdir(parents=True)
    (run_dir / SAVED_CONFIG).write_text(yaml.safe_dump(cfg))
    Archive(run_dir / "archive.sqlite").close()
    settings, _ = resolve_run(None, str(run_dir), [])
    assert settings.selection.pick_seeds == 0
