"""The cheap stages before the full protocol (``search/fidelity.py``) and their rank agreement (``rank_agreement``).

Scripted tests drive the real cascade with a scripted executor (no worker): a stage with no shown agreement
only orders the full protocol's work; with agreement shown it rejects candidates below its cut, never a
reference, and a rejected candidate's spend is counted in fine-tune steps. Two tests use real sandboxed
workers: the diagnostic stage (loss oracle, bandit presets) and, marked slow, a short fine-tune on the tiny task.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import SMALL_RUN
from scripted_executor import Script, ScriptedExecutor, candidate

from discopop.archive import Archive
from discopop.config import CascadeSettings, ConfigError, SyntheticTaskSettings, TrainingSettings, plain
from discopop.execution.executors import Job, JobResult, WorkerSpec
from discopop.fitness.rank_agreement import agreement_key, bootstrap_spearman, ranks, spearman
from discopop.fitness.tuning import LrProtocol
from discopop.search.cascade import Evaluator
from discopop.search.fidelity import Fidelity, stage_settings

FULL_STEPS = 40
TASK = {"kind": "synthetic", "name": "addition"}
TASK_SETTINGS = SyntheticTaskSettings()  # the run's task, as the loop gives it to the cheap stages
TRAINING = plain(TrainingSettings())


class StepCountingExecutor(ScriptedExecutor):
    """A scripted executor whose replies count steps as a worker's do: a short job runs its share of a full run."""

    def answer(self, job: Job) -> JobResult:
        result = super().answer(job)
        if result.ok and job.stage == "train":
            steps = FULL_STEPS if job.step_fraction is None else max(1, math.floor(job.step_fraction * FULL_STEPS))
            result.reply = replace(result.trained, steps=steps, full_steps=FULL_STEPS)
        return result


# ---- rank agreement ---------------------------------------------------------------------------------------


def test_spearman_ranks_ties_and_direction() -> None:
    assert list(ranks([3.0, 1.0, 1.0, 2.0])) == [3.0, 0.5, 0.5, 2.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))  # a constant side has no ranking


def test_bootstrap_interval_brackets_rho_and_is_wide_for_few_losses() -> None:
    good = bootstrap_spearman(list(range(30)), [x + (x % 3) for x in range(30)], resamples=500, seed=1)
    few = bootstrap_spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], resamples=500, seed=1)
    assert good.lower <= good.rho <= good.upper and good.lower > 0.8
    assert few.lower <= few.rho <= few.upper and few.lower < 0.5  # five losses show little


def test_agreement_key_follows_ranking_settings_only() -> None:
    stage = stage_settings(CascadeSettings(stages=["short"]), "short")
    base = agreement_key(TASK, TRAINING, stage)
    assert agreement_key({**TASK, "cache_dir": "/elsewhere"}, TRAINING, stage) == base
    assert agreement_key(TASK, {**TRAINING, "threads": 7}, stage) == base
    assert agreement_key(TASK, {**TRAINING, "beta": 0.1}, stage) != base
    assert agreement_key(TASK, TRAINING, stage_settings(CascadeSettings(short_fraction=0.1), "short")) != base


def test_settings_refuse_a_short_stage_above_a_quarter() -> None:
    CascadeSettings(stages=["short"], short_fraction=0.25).check()
    with pytest.raises(ConfigError, match="short_fraction"):
        CascadeSettings(stages=["short"], short_fraction=0.5).check()
    with pytest.raises(ConfigError, match="unknown stage"):
        CascadeSettings(stages=["tea_leaves"]).check()


# ---- the cascade with a scripted executor -----------------------------------------------------------------

REFS = {"ref_a": 0.30, "ref_b": 0.40, "ref_c": 0.50, "ref_d": 0.60, "ref_e": 0.70}
CANDS = {"good_1": 0.65, "bad_1": 0.10, "good_2": 0.55, "bad_2": 0.20}


def _write_agreement(path: Path, settings: CascadeSettings, lower: float, key: str | None = None) -> None:
    key = key or agreement_key(plain(TASK_SETTINGS), TRAINING, stage_settings(settings, "short"))
    path.write_text(json.dumps({"stages": {"short": {"key": key, "rho": lower + 0.1, "lower": lower,
                                                     "upper": 1.0, "n": 17}}}))


def _run(tmp_path: Path, settings: CascadeSettings, late_reference: bool = False):
    scripts = {name: Script(fitness=value) for name, value in {**REFS, **CANDS, "ref_late": 0.05}.items()}
    executor = StepCountingExecutor(scripts, workers=2)
    archive = Archive(tmp_path / "archive.sqlite")
    fidelity = Fidelity(settings, task=TASK_SETTINGS, training=TrainingSettings(), seed=0, executor=executor,
                        base_spec=WorkerSpec(task=None, training=None))
    evaluator = Evaluator(archive, executor, seed=0, protocol=LrProtocol(grid=(2e-5,), screen_margin=None),
                          fidelity=fidelity)
    refs = [archive.add(candidate(n, proposer="reference"), 0) for n in REFS]
    list(evaluator.evaluate([archive.get(i) for i in refs]))
    names = list(CANDS) + (["ref_late"] if late_reference else [])
    ids = [archive.add(candidate(n, proposer="reference" if n == "ref_late" else "evolution"), 1) for n in names]
    executor.rounds.clear()
    outcomes = {archive.get(o.row_id).name: o for o in evaluator.evaluate([archive.get(i) for i in ids])}
    return executor, archive, fidelity, outcomes


@pytest.mark.parametrize("agreement", ["none", "weak", "other_settings"])
def test_a_stage_without_shown_agreement_only_orders(tmp_path: Path, agreement: str) -> None:
    settings = CascadeSettings(stages=["short"], min_history=3)
    if agreement != "none":
        path = tmp_path / "agreement.json"
        _write_agreement(path, settings, 0.2 if agreement == "weak" else 0.95,
                         key="0123456789abcdef" if agreement == "other_settings" else None)
        settings.agreement = str(path)
    executor, archive, fidelity, outcomes = _run(tmp_path, settings)
    assert fidelity.filters == {"short": False}
    assert {n: o.status for n, o in outcomes.items()} == dict.fromkeys(CANDS, "scored")  # nobody rejected
    full_rounds = [r for r in executor.rounds if r and r[0].stage == "train" and r[0].step_fraction is None]
    order = [archive.get(j.row_id).name for j in full_rounds[0]]
    assert order == sorted(CANDS, key=lambda n: -CANDS[n])  # the full protocol's work, best cheap score first
    for outcome in outcomes.values():
        short = outcome.metrics["fidelity"]["short"]
        assert short["filters"] is False and short["steps"] == FULL_STEPS // 4


def test_a_stage_with_shown_agreement_rejects_below_its_cut_within_a_quarter_of_a_fine_tune(tmp_path: Path) -> None:
    settings = CascadeSettings(stages=["short"], min_history=3, cut_quantile=0.25)
    path = tmp_path / "agreement.json"
    _write_agreement(path, settings, 0.8)
    settings.agreement = str(path)
    executor, archive, fidelity, outcomes = _run(tmp_path, settings, late_reference=True)
    assert fidelity.filters == {"short": True}
    # The cut: the 0.25 quantile of the five references' short scores (0.3 .. 0.7) is 0.4.
    assert {n: o.status for n, o in outcomes.items()} == {"good_1": "scored", "good_2": "scored",
                                                         "bad_1": "eval_failed", "bad_2": "eval_failed",
                                                         "ref_late": "scored"}  # a reference is never rejected
    full_jobs = {archive.get(j.row_id).name for r in executor.rounds for j in r
                 if j.stage == "train" and j.step_fraction is None}
    assert full_jobs == {"good_1", "good_2", "ref_late"}  # the rejected never reach a full fine-tune
    for name in ("bad_1", "bad_2"):
        out = outcomes[name]
        assert out.metrics["stage"] == "fidelity" and out.error.startswith("filtered: short stage")
        spent = out.metrics["fidelity"]["short"]
        assert spent["steps"] <= 0.25 * spent["full_steps"]  # counted in fine-tune steps
        assert sum(1 for r in executor.rounds for j in r if archive.get(j.row_id).name == name
                   and j.stage == "train") == 1  # one short job, nothing else


# ---- real sandboxed workers -------------------------------------------------------------------------------


def test_the_diagnostic_stage_runs_in_sandboxed_workers_through_the_oracle(tmp_path: Path, cache_dir) -> None:
    from discopop.config.compose import compose_settings
    from discopop.proposers.reference import reference_candidate
    from discopop.search.loop import worker_spec

    cfg, _ = compose_settings(SMALL_RUN)
    settings = CascadeSettings(stages=["diagnostic"], diagnostic_presets=["clean"], diagnostic_lrs=[0.03])
    dpo = reference_candidate("dpo").code
    negated = dpo.replace("-F.logsigmoid(beta * rho)", "F.logsigmoid(beta * rho)")
    wrong_shape = dpo.replace("-F.logsigmoid(beta * rho)", "(-F.logsigmoid(beta * rho)).mean()")
    assert len({dpo, negated, wrong_shape}) == 3
    fidelity = Fidelity(settings, task=cfg.task, training=cfg.training, seed=0, executor=None,
                        base_spec=worker_spec(cfg))
    try:
        scores = fidelity.diagnostic_scores({1: dpo, 2: negated, 3: wrong_shape})
        (executor,) = fidelity._diagnostic.values()
        report = executor.sandbox_report()
    finally:
        fidelity.close()
    assert scores[1].score is not None and scores[2].score is not None
    assert scores[1].score > scores[2].score  # DPO learns the preference; its negation learns the opposite
    assert scores[3].score is None  # the oracle's wrong-shaped output fails the fine-tune in the worker
    assert all(s.steps == 0 for s in scores.values())  # no step of the run's task
    assert report and "state-watch" in report[0]["layers"]  # a sealed worker scored them, not this process


@pytest.mark.slow
def test_a_short_fine_tune_runs_its_share_of_the_steps(tmp_path: Path, tiny_task) -> None:
    """A real short and a real full fine-tune of DPO on the tiny task (~30 s on 2 idle cores)."""
    from discopop.config.compose import compose_settings
    from discopop.execution.executors import LocalExecutor
    from discopop.proposers.reference import reference_candidate
    from discopop.search.loop import worker_spec

    cfg, _ = compose_settings([*SMALL_RUN, "training.epochs=2", "training.batch_size=4"])
    settings = CascadeSettings(stages=["short"], short_fraction=0.25)
    executor = LocalExecutor(worker_spec(cfg), workers=1)
    dpo = reference_candidate("dpo").code
    try:
        fidelity = Fidelity(settings, task=cfg.task, training=cfg.training, seed=0,
                            executor=executor, base_spec=worker_spec(cfg))
        short = fidelity.short_scores({1: (dpo, 2e-5)})[1]
        (full,) = list(executor.run([Job(1, dpo, "train", 0, learning_rate=2e-5)]))
    finally:
        executor.close()
    assert full.ok and short.score is not None
    assert full.trained.steps == full.trained.full_steps == short.full_steps >= 4
    assert short.steps == math.floor(0.25 * short.full_steps) and short.steps <= 0.25 * full.trained.steps


def test_a_candidate_over_a_quarter_of_a_fine_tune_is_never_rejected() -> None:
    """On a task too small for a 25% stage (1 step of 2), the stage cannot keep its budget: it only orders."""
    from discopop.search.fidelity import StageResult

    assert Fidelity.within_budget(StageResult(0.1, steps=1, full_steps=4))
    assert not Fidelity.within_budget(StageResult(0.1, steps=1, full_steps=2))
    assert not Fidelity.within_budget(StageResult(None, steps=1, full_steps=None))  # cost unknown: keep it
    assert Fidelity.within_budget(StageResult(0.1, steps=0))  # the diagnostic stage spends no task step
