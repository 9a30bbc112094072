"""The beta axis of the tuning protocol (``training.beta_grid``): every row climbs over (learning rate, beta),
the beta is chosen on the tuning half of the search prompts and the row ranked on the other, the row records it,
and its race seeds, confirmation, stored runs and export use it. Off, nothing of it shows."""

from __future__ import annotations

import io
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from scripted_executor import Script, ScriptedExecutor, ScriptedProposer, candidate, fingerprint, loss_name, scored
from scripted_executor import config_with as config

from discopop.archive import Archive
from discopop.config import ConfigError, RunSettings, TrainingSettings
from discopop.config.compose import compose, compose_settings
from discopop.execution.executors import Job, JobResult
from discopop.fitness.result_store import StoredRuns
from discopop.fitness.tuning import LrProtocol, Sweep
from discopop.proposers.base import Candidate
from discopop.report.display import Display
from discopop.report.export import export_candidate
from discopop.search.loop import Loop

GRID = (1e-5, 2e-5, 4e-5)
BETA = 0.5  # the default config's training.beta
MULTIPLIERS = [0.5, 1, 2]
PROPOSALS = Path(__file__).resolve().parent.parent / "discopop" / "proposals"


@pytest.fixture(scope="module")
def base_cfg() -> dict[str, Any]:
    cfg, _ = compose(["baselines=[dpo,lrml]", f"training.lr_grid=[{','.join(map(str, GRID))}]",
                      "training.lr_screen_margin=0.05", "confirm.seeds=0", "wandb.mode=disabled",
                      "selection.max_seeds=1"])
    assert cfg["training"]["beta"] == BETA and cfg["training"]["beta_grid"] is None  # off by default
    return cfg


class BetaExecutor(ScriptedExecutor):
    """A scripted executor whose fitness also depends on the job's beta: ``shifts[name][beta]`` is added to the
    even-indexed (tuning) prompts and the odd-indexed (ranking) prompts, as a pair (tune, rank)."""

    def __init__(self, scripts, shifts: dict[str, dict[float, tuple[float, float]]], **kwargs: Any):
        super().__init__(scripts, **kwargs)
        self.shifts = shifts

    def answer(self, job: Job) -> JobResult:
        result = super().answer(job)
        if job.stage == "check" and result.ok:  # by code, not function name: a reference's variants differ
            result.checked.checks["fingerprint"] = fingerprint(job.code)
        if job.stage != "train" or not result.ok:
            return result
        data = result.trained
        if job.beta is not None:
            shift = next((s for b, s in self.shifts.get(loss_name(job.code), {}).items()
                          if math.isclose(b, job.beta)), (0.0, 0.0))
            per_prompt = [v + shift[i % 2] for i, v in enumerate(data.per_prompt)]
            fitness = sum(per_prompt) / len(per_prompt)
            result.reply = replace(data, beta=job.beta, per_prompt=per_prompt, fitness=fitness, reward=fitness)
        return result


REFS = {"dpo": Script(fitness={1e-5: 0.80, 2e-5: 0.85, 4e-5: 0.83}), "lrml": Script(fitness={4e-5: 0.86})}


def run(cfg: dict[str, Any], run_dir: Path, executor: ScriptedExecutor, proposer=None, **meta: Any) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    display = Display(0, console=Console(file=io.StringIO(), width=200), quiet=True)
    loop = Loop(RunSettings.coerce(cfg), run_dir, display, proposer=proposer, executor=executor,
                task_meta={"sft_heldout_reward": 0.8, "pairs": 64, **meta})
    try:
        loop.run(1)
    finally:
        loop.archive.close()


def rows(run_dir: Path) -> dict[str, Any]:
    archive = Archive(run_dir / "archive.sqlite", create=False)
    try:
        return {r.name: r for r in archive.rows()}
    finally:
        archive.close()


def archive_dump(run_dir: Path) -> list[tuple]:
    """Every decision of a run: rows (without timings) and evaluations."""
    archive = Archive(run_dir / "archive.sqlite", create=False)
    try:
        out = []
        for r in archive.rows():
            metrics = dict(r.metrics)
            metrics.pop("seconds", None)
            evals = [(e.seed, e.split, e.learning_rate, e.fitness, e.error) for e in archive.evaluations(r.id)]
            out.append((r.id, r.name, r.status, r.fitness, json.dumps(metrics, sort_keys=True), evals))
        return out
    finally:
        archive.close()


# ---- the protocol ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("multipliers", [None, [1], [1.0]])
def test_an_absent_or_unit_beta_grid_is_the_rate_only_protocol(multipliers) -> None:
    protocol = LrProtocol.from_config(TrainingSettings(beta=BETA, lr_grid=list(GRID), beta_grid=multipliers))
    assert protocol.betas is None and protocol.default_point() == (2e-5, None)
    assert protocol.points() == [(lr, None) for lr in GRID]
    sweep = Sweep()
    sweep.add(2e-5, True, scored(0.8), "train", None)
    assert protocol.next_points(sweep) == [(1e-5, None), (4e-5, None)]  # the rate neighbours only


def test_the_climb_moves_along_both_axes_from_the_run_beta() -> None:
    protocol = LrProtocol.from_config(TrainingSettings(beta=BETA, lr_grid=list(GRID), beta_grid=MULTIPLIERS))
    assert protocol.betas == (0.25, 0.5, 1.0) and protocol.default_point() == (2e-5, 0.5)
    assert len(protocol.points()) == 9
    sweep = Sweep()
    sweep.add(2e-5, True, scored(0.80), "train", None, beta=0.5)
    assert protocol.next_points(sweep) == [(1e-5, 0.5), (4e-5, 0.5), (2e-5, 0.25), (2e-5, 1.0)]
    for point, value in {(1e-5, 0.5): 0.7, (4e-5, 0.5): 0.7, (2e-5, 0.25): 0.6, (2e-5, 1.0): 0.9}.items():
        sweep.add(point[0], True, scored(value), "train", None, beta=point[1])
    assert protocol.next_points(sweep) == [(1e-5, 1.0), (4e-5, 1.0)]  # beta 1.0 is the edge of the beta grid
    sweep.add(1e-5, False, None, "train", "diverged", beta=1.0)  # a failure counts as tried
    sweep.add(4e-5, True, scored(0.85), "train", None, beta=1.0)
    assert protocol.next_points(sweep) == []
    assert sweep.best_point()[0] == (2e-5, 1.0) and sweep.best_beta() == 1.0


def test_a_candidate_screens_at_its_parents_beta_else_the_runs_most_common() -> None:
    protocol = LrProtocol.from_config(TrainingSettings(beta=BETA, lr_grid=list(GRID), beta_grid=MULTIPLIERS))
    assert protocol.screen_point([(4e-5, 1.0)], [(1e-5, 0.25)]) == (4e-5, 1.0)
    assert protocol.screen_point([], [(1e-5, 0.25), (1e-5, 0.25), (2e-5, 0.5)]) == (1e-5, 0.25)
    assert protocol.screen_point([(4e-5, None)], []) == (4e-5, 0.5)  # a parent scored without the axis


def test_beta_grid_must_be_positive_multipliers() -> None:
    for bad in ([], [0.0, 1.0], [-1.0], ["x"]):
        with pytest.raises(ConfigError, match="beta_grid"):
            TrainingSettings(beta_grid=bad).check()
    TrainingSettings(beta_grid=[0.5, 1.0, 2.0]).check()


def test_summary_records_the_chosen_beta_and_the_whole_table() -> None:
    sweep = Sweep(tuned=True)
    sweep.add(1e-5, True, scored(0.80), "train", None, beta=0.5)
    sweep.add(1e-5, True, scored(0.90), "train", None, beta=1.0)
    sweep.add(2e-5, True, scored(0.85), "train", None, beta=1.0)
    sweep.add(2e-5, False, None, "train", "diverged", beta=0.5)
    summary = sweep.summary((1e-5, 2e-5), (0.25, 0.5, 1.0))
    assert summary["learning_rate"] == 1e-5 and summary["beta"] == 1.0 and summary["beta_at_edge"] is True
    assert summary["lr_sweep"] == {"1e-05": 0.9, "2e-05": 0.85}  # the slice at the chosen beta
    assert summary["beta_sweep"] == {"0.5": {"1e-05": 0.8, "2e-05": None}, "1": {"1e-05": 0.9, "2e-05": 0.85}}
    off = Sweep(tuned=True)
    off.add(1e-5, True, scored(0.80), "train", None)
    assert not {"beta", "beta_sweep", "beta_at_edge"} & set(off.summary((1e-5, 2e-5)))


# ---- through the loop (scripted executor) --------------------------------------------------------------------


def test_off_sends_no_beta_and_a_unit_grid_archives_exactly_the_same(base_cfg, tmp_path: Path) -> None:
    dumps = []
    for tag, multipliers in (("null", None), ("unit", [1.0])):
        executor = BetaExecutor(REFS, {}, workers=2)
        cfg = config(base_cfg, candidates_per_generation=1, training__beta_grid=multipliers)
        run(cfg, tmp_path / tag, executor, ScriptedProposer({1: [candidate("cand")]}))
        assert all(job.beta is None for job in executor.jobs("train"))
        assert not any("beta" in r.metrics or "beta_sweep" in r.metrics for r in rows(tmp_path / tag).values())
        dumps.append(archive_dump(tmp_path / tag))
    assert dumps[0] == dumps[1] and len(dumps[0]) == 3


def test_references_and_candidates_climb_over_beta_chosen_on_the_tuning_half(base_cfg, tmp_path: Path) -> None:
    # dpo and the candidate are better at beta 1.0 (x2) on both halves. lrml at beta 0.25 looks better on the
    # tuning half only (+0.05 there, -0.10 on the ranking half): it is chosen, and the row's fitness is the ranking
    # half's, below what a best-of over betas on the ranking prompts would have given it (0.86 at beta 0.5).
    shifts = {"dpo": {1.0: (0.02, 0.02)}, "lrml": {0.25: (0.05, -0.10)},
              "cand": {1.0: (0.03, 0.03)}}
    scripts = {**REFS, "cand": Script(fitness={2e-5: 0.84, 4e-5: 0.86})}
    executor = BetaExecutor(scripts, shifts, workers=2)
    cfg = config(base_cfg, candidates_per_generation=1, training__beta_grid=MULTIPLIERS)
    run(cfg, tmp_path, executor, ScriptedProposer({1: [candidate("cand")]}))
    found = rows(tmp_path)
    dpo, lrml, cand = found["dpo"], found["lrml"], found["cand"]
    assert (dpo.metrics["learning_rate"], dpo.metrics["beta"]) == (2e-5, 1.0)
    assert dpo.fitness == pytest.approx(0.85 + 0.02)
    # lrml's beta 0.25 wins the tuning half (+0.05) and is chosen; its fitness is the ranking half's (-0.10)
    assert (lrml.metrics["learning_rate"], lrml.metrics["beta"]) == (4e-5, 0.25)
    assert lrml.fitness == pytest.approx(0.86 - 0.10)
    assert lrml.metrics["fitness_tune"] == pytest.approx(0.86 + 0.05)
    assert (cand.metrics["learning_rate"], cand.metrics["beta"]) == (4e-5, 1.0)
    assert cand.metrics["beta_sweep"]["1"]["4e-05"] == pytest.approx(0.86 + 0.03)
    jobs = executor.jobs("train")
    for row in (dpo, lrml):  # a reference starts at the run's beta, the grid's middle rate, then climbs
        mine = [j for j in jobs if j.row_id == row.id]
        assert (mine[0].learning_rate, mine[0].beta) == (2e-5, BETA) and len({j.beta for j in mine}) == 3
    # the candidate screens at the run's most common chosen point (dpo's, the first scored), then climbs
    mine = [j for j in jobs if j.row_id == cand.id]
    assert (mine[0].learning_rate, mine[0].beta) == (2e-5, 1.0) and len(mine) > 1


def test_race_seeds_and_confirmation_run_at_the_chosen_beta(base_cfg, tmp_path: Path) -> None:
    shifts = {"dpo": {1.0: (0.02, 0.02)}, "winner": {0.25: (0.04, 0.04)}}
    scripts = {**REFS, "winner": Script(fitness={2e-5: 0.95, 4e-5: 0.97}, seed_shift={1001: 0.01})}
    executor = BetaExecutor(scripts, shifts, workers=2)
    cfg = config(base_cfg, candidates_per_generation=1, training__beta_grid=MULTIPLIERS, confirm__seeds=2,
                 confirm__top_k=1, selection__max_seeds=2)
    run(cfg, tmp_path, executor, ScriptedProposer({1: [candidate("winner")]}))
    found = rows(tmp_path)
    assert found["winner"].metrics["beta"] == 0.25 and found["dpo"].metrics["beta"] == 1.0
    jobs = executor.jobs("train")
    for name in ("winner", "dpo"):
        row = found[name]
        confirm = [j for j in jobs if j.row_id == row.id and j.split == "confirm"]
        race = [j for j in jobs if j.row_id == row.id and j.split == "search" and j.seed != cfg["seed"]]
        assert confirm and all(j.beta == row.metrics["beta"] for j in confirm)
        assert race and all(j.beta == row.metrics["beta"] for j in race)
        assert row.metrics["confirmation"]["beta"] == row.metrics["beta"]


# ---- stored runs and export ----------------------------------------------------------------------------------


def test_a_stored_run_is_keyed_by_the_beta_it_ran_at(base_cfg) -> None:
    store = StoredRuns(cache=None, task="t", beta=BETA, default_lr=1e-5)
    assert store.key(Job(1, "", "train", 0, learning_rate=2e-5), "h").beta == BETA
    assert store.key(Job(1, "", "train", 0, learning_rate=2e-5, beta=1.0), "h").beta == 1.0


def test_export_passes_the_rows_chosen_beta_to_trl(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(f"training:\n  beta: {BETA}\n")
    arch = Archive(run_dir / "archive.sqlite")
    try:
        ids = {}
        for name, beta in (("tuned", 1.0), ("plain", None)):
            ids[name] = arch.add(Candidate(name=name, code=(PROPOSALS / "dpo.py").read_text(), proposer="reference"),
                                 generation=0)
            metrics = {"reward": 0.8, "kl": 0.1, "learning_rate": 2e-5, **({"beta": beta} if beta else {})}
            arch.finish(ids[name], "scored", fitness=0.8, metrics=metrics)
        tuned = export_candidate(arch, ids["tuned"], tmp_path / "tuned.py").read_text()
        plain = export_candidate(arch, ids["plain"], tmp_path / "plain.py").read_text()
    finally:
        arch.close()
    assert "beta=1.0, learning_rate=2e-05" in tuned and "beta 1, lr 2e-05 (the beta its search chose" in tuned
    assert "--beta 1.0" in tuned  # the check line: its diagnostics at the beta it was found at
    assert f"beta={BETA}, learning_rate=2e-05" in plain and "the run's training.beta" in plain
    assert "--beta" not in plain


# ---- the diagnostic tier's tuner (the worker passes a job's beta to it) ---------------------------------------


@pytest.mark.usefixtures("one_torch_thread")
def test_the_diagnostic_tuner_trains_at_the_jobs_beta() -> None:
    from discopop.contract.losses import load_loss  # lazy: only this test needs the trusted loss loader
    from discopop.fitness.diagnostic_tune import DiagnosticTuner, fine_tune

    dpo = load_loss((PROPOSALS / "dpo.py").read_text())  # a trusted reference file
    cfg, _ = compose_settings(["task=diagnostic", "task.contexts=64", "task.eval_contexts=64", "task.steps=30",
                               "task.batch=64"])
    tuner = DiagnosticTuner(cfg.task, cfg.training, kl_coef=0.0)
    default = tuner.run(dpo, seed=1, learning_rate=0.1)
    doubled = tuner.run(dpo, seed=1, learning_rate=0.1, beta=2 * tuner.beta)
    assert "beta" not in default and doubled["beta"] == 2 * tuner.beta
    direct = fine_tune(dpo, tuner.setting, seed=1, lr=0.1, beta=2 * tuner.beta)
    assert doubled["reward"] != default["reward"]
    assert doubled["train_metrics"]["margin_abs_q50"] != default["train_metrics"]["margin_abs_q50"]
    assert doubled["final_loss"] == pytest.approx(direct.final_loss)


# ---- the references' own constants, and what the LLM is told ---------------------------------------------------


def test_declared_reference_constants_are_real_and_move_one_step_each_way() -> None:
    from discopop.proposers.reference import TUNABLE_CONSTANTS, constant_variants, reference_candidate

    for name, declared in TUNABLE_CONSTANTS.items():
        variants = constant_variants(name)
        assert variants[0] == {} and len(variants) == 1 + 2 * len(declared)
        for variant in variants[1:]:
            code = reference_candidate(name, constants=variant).code
            (constant, value), = variant.items()
            assert f"{constant} = {value!r}  # tuned" in code
            if declared[constant] == "weight":
                assert 0 < value < 1
    assert constant_variants("dpo") == [{}]
    assert [v["TAU"] for v in constant_variants("lrml")[1:]] == [pytest.approx(0.05 / 3, rel=1e-3), 0.15]
    assert [v["ALPHA"] for v in constant_variants("cell")[1:]] == [0.25, 0.75]  # odds 1 -> 1/3 and 3
    with pytest.raises(ValueError, match="not a tunable constant"):
        reference_candidate("dpo", constants={"BETA": 1.0})


def test_the_llm_is_told_beta_is_tuned_only_when_it_is(base_cfg) -> None:
    from discopop.proposers.llm.facts import FitnessFacts  # lazy: only this test needs the prompt facts

    off = FitnessFacts.from_run(RunSettings.coerce(base_cfg), {}).render()
    on = FitnessFacts.from_run(RunSettings.coerce(config(base_cfg, training__beta_grid=MULTIPLIERS)), {}).render()
    assert f"beta = {BETA:g}: the value passed" in off and "tuned for every loss" not in off
    assert "tuned for every loss, over [0.25, 0.5, 1]" in on


def test_baseline_constants_adds_each_declared_constant_as_a_baseline_of_its_own(base_cfg, tmp_path: Path) -> None:
    for flag in (False, True):
        executor = BetaExecutor(REFS, {}, workers=2)
        run(config(base_cfg, candidates_per_generation=1, baseline_constants=flag), tmp_path / str(flag), executor,
            ScriptedProposer({}))
        found = rows(tmp_path / str(flag))
        if not flag:
            assert set(found) == {"dpo", "lrml"}
            continue
        assert set(found) == {"dpo", "lrml", "lrml_tau_0_01667", "lrml_tau_0_15"}  # dpo declares no constant
        assert all(r.proposer == "reference" and r.status == "scored" for r in found.values())
        assert "TAU = 0.15  # tuned" in found["lrml_tau_0_15"].code
        assert "TAU = 0.05\n" in found["lrml"].code
        # a resumed run finds them by name and adds none again
        run(config(base_cfg, candidates_per_generation=1, baseline_constants=flag), tmp_path / str(flag), executor,
            ScriptedProposer({}))
        assert len(rows(tmp_path / str(flag))) == 4


def test_cdpo_and_rdpo_run_at_the_flip_rate_the_task_facts_state(tmp_path: Path) -> None:
    """The diagnostic tier has no task.pairs: its preset's flip rate comes in the task facts (``label_noise``)."""
    cfg, _ = compose(["task=diagnostic", "task.preset=label_noise", "baselines=[dpo,cdpo,rdpo]", "confirm.seeds=0",
                      "wandb.mode=disabled", "selection.max_seeds=1", "candidates_per_generation=1"])
    run(cfg, tmp_path, BetaExecutor(REFS, {}, workers=2), ScriptedProposer({}), label_noise=0.3)
    found = rows(tmp_path)
    assert "LABEL_SMOOTHING = 0.3  # the task's flip rate" in found["cdpo"].code
    assert "FLIP_RATE = 0.3  # the task's flip rate" in found["rdpo"].code


@pytest.mark.usefixtures("one_torch_thread")
def test_the_trl_fine_tune_trains_at_the_jobs_beta_then_at_the_runs_again(tiny_task) -> None:
    import tempfile  # lazy: only this test needs a scratch directory and the TRL fine-tuner

    from discopop.contract.losses import load_loss
    from discopop.fitness.training import FineTuner

    task, cfg = tiny_task
    training = TrainingSettings(**{**cfg["training"], "batch_size": 16, "learning_rate": 1e-2, "threads": 1,
                                   "epochs": 2})
    tuner = FineTuner(task, training, Path(tempfile.mkdtemp()))
    dpo = load_loss((PROPOSALS / "dpo.py").read_text())
    first = tuner.run(dpo, seed=0)
    doubled = tuner.run(dpo, seed=0, beta=4 * training.beta)
    assert tuner.trainer.beta == 4 * training.beta
    again = tuner.run(dpo, seed=0)
    assert tuner.trainer.beta == training.beta
    # the loss saw beta x 4: the scaled margins |beta * rho| it trained on are larger (rho moves as well)
    assert doubled.metrics["margin_abs_q90"] > first.metrics["margin_abs_q90"] > 0
    assert again.metrics == first.metrics and again.score.fitness == first.score.fitness
