"""The fresh-seed confirmation on a real archive with stored per-prompt runs (no training): which jobs it
asks for, and the verdicts it stores for failed, missing, single and clear-cut comparisons."""

from __future__ import annotations

import math
from pathlib import Path

import helper_confirm
import numpy as np
import pytest
from helper_confirm import PROMPTS, SEEDS, scored_row, train_reply

from discopop.archive import Archive, Evaluation
from discopop.config import RunSettings
from discopop.config.compose import compose_settings
from discopop.fitness import stats
from discopop.proposers.base import Candidate
from discopop.proposers.llm.facts import NOT_MEASURED, FitnessFacts
from discopop.search.confirmation import (
    SUPERSEDED,
    best_references,
    judge,
    missing_jobs,
    strongest_on_fresh_seeds,
    top_candidates,
)

archive = helper_confirm.archive  # the shared fixture, asked for by name
DPO_FILE = Path(__file__).resolve().parent.parent / "discopop" / "proposals" / "dpo.py"


def _runs(arch: Archive, row: int, accuracy: float, rng: np.random.Generator, seeds=SEEDS) -> None:
    """Exact-match rewards on shared prompts: one uniform draw per (seed, prompt) shared by every arm."""
    for seed in seeds:
        u = np.random.default_rng(seed).random(PROMPTS)
        rewards = (u < accuracy + rng.normal(0, 0.01)).astype(float).tolist()
        reply = {"fitness": float(np.mean(rewards)), "reward": float(np.mean(rewards)), "kl": 0.0,
                 "per_prompt": rewards, "per_prompt_kl": [0.0] * PROMPTS, "learning_rate": 1e-5}
        arch.add_evaluation(Evaluation.from_reply(row, seed, "confirm", train_reply(**reply)))


def test_jobs_use_each_rows_learning_rate_and_skip_stored_runs_even_failed_ones(archive: Archive) -> None:
    cand = scored_row(archive, "cand", 0.9, lr=4e-5)
    dpo = scored_row(archive, "dpo", 0.8, proposer="reference")
    archive.add_evaluation(Evaluation(cand, SEEDS[0], "confirm", 4e-5, error="train: loss is nan at step 2"))
    archive.add_evaluation(Evaluation(cand, 7, "search", 4e-5, fitness=0.9))  # a search run is not a confirmation
    jobs = missing_jobs(archive, [archive.get(cand), archive.get(dpo)], SEEDS)
    assert [(j.row_id, j.seed, j.learning_rate, j.split) for j in jobs] == [
        (cand, SEEDS[1], 4e-5, "confirm"), (cand, SEEDS[2], 4e-5, "confirm"),
        *[(dpo, s, None, "confirm") for s in SEEDS]]


def test_a_clear_gain_beats_both_baselines_and_everything_is_stored(archive: Archive) -> None:
    rng = np.random.default_rng(0)
    good, flat = scored_row(archive, "good", 0.9), scored_row(archive, "flat", 0.85)
    dpo, lrml = scored_row(archive, "dpo", 0.80, "reference"), scored_row(archive, "lrml", 0.82, "reference")
    for row, acc in ((good, 0.70), (flat, 0.52), (dpo, 0.50), (lrml, 0.52)):
        _runs(archive, row, acc, rng)
    comps = judge(archive, [archive.get(good), archive.get(flat)], archive.get(dpo), archive.get(lrml), SEEDS)
    assert len(comps) == 4 and all(c.p_adjusted >= c.p for c in comps)
    conf = archive.get(good).metrics["confirmation"]
    assert conf["vs_dpo"]["verdict"] == stats.BEATS and conf["vs_best"]["verdict"] == stats.BEATS
    assert conf["vs_best"]["baseline"] == "lrml" and conf["vs_dpo"]["text"].startswith("+0.2")
    assert len(conf["fitness"]) == 3 and conf["se"] > 0 and conf["vs_dpo"]["ci"][0] > 0
    assert archive.get(flat).metrics["confirmation"]["vs_best"]["verdict"] == stats.WITHIN
    dpo_conf = archive.get(dpo).metrics["confirmation"]
    assert "vs_dpo" not in dpo_conf and dpo_conf["mean"] == pytest.approx(np.mean(dpo_conf["fitness"]))


def test_the_candidates_are_held_to_the_reference_that_is_strongest_on_the_fresh_seeds(archive: Archive) -> None:
    """hinge leads on the search seed, lrml on the fresh seeds; ipo leads on both but failed a fresh seed."""
    rng = np.random.default_rng(3)
    cand = scored_row(archive, "cand", 0.95)
    dpo, hinge = scored_row(archive, "dpo", 0.80, "reference"), scored_row(archive, "hinge", 0.93, "reference")
    lrml, ipo = scored_row(archive, "lrml", 0.90, "reference"), scored_row(archive, "ipo", 0.94, "reference")
    for row, acc in ((cand, 0.66), (dpo, 0.50), (hinge, 0.55), (lrml, 0.70), (ipo, 0.90)):
        _runs(archive, row, acc, rng)
    archive.add_evaluation(Evaluation(ipo, SEEDS[1], "confirm", None, error="train: loss is nan at step 9"))
    contenders = best_references(archive, 3)
    assert [r.name for r in contenders] == ["ipo", "hinge", "lrml"]  # by search fitness
    best = strongest_on_fresh_seeds(archive, contenders, SEEDS)
    assert best is not None and best.name == "lrml"  # ipo's failed seed rules it out; lrml beats hinge fresh
    judge(archive, [archive.get(cand)], archive.get(dpo), best, SEEDS, also=contenders)
    conf = archive.get(cand).metrics["confirmation"]
    assert conf["vs_best"]["baseline"] == "lrml" and conf["vs_best"]["delta"] < 0  # against hinge it would be > 0
    assert archive.get(hinge).metrics["confirmation"]["mean"] < archive.get(lrml).metrics["confirmation"]["mean"]
    assert strongest_on_fresh_seeds(archive, [archive.get(ipo)], SEEDS).name == "ipo"  # none complete: search's


def test_a_failed_or_missing_seed_fails_the_comparison(archive: Archive) -> None:
    rng = np.random.default_rng(1)
    good, dpo = scored_row(archive, "good", 0.9), scored_row(archive, "dpo", 0.8, "reference")
    _runs(archive, good, 0.9, rng)
    _runs(archive, dpo, 0.3, rng, seeds=SEEDS[:2])
    archive.add_evaluation(Evaluation(dpo, SEEDS[2], "confirm", None, error="train: timed out after 600 s"))
    judge(archive, [archive.get(good)], archive.get(dpo), archive.get(dpo), SEEDS)
    conf = archive.get(good).metrics["confirmation"]
    assert conf["vs_dpo"]["verdict"] == stats.FAILED and "timed out" in conf["vs_dpo"]["reason"]
    assert conf["vs_best"] is None  # DPO is the strongest baseline: one comparison, not two
    assert archive.get(dpo).metrics["confirmation"]["fitness"][2] is None
    other = scored_row(archive, "other", 0.85)
    _runs(archive, other, 0.9, rng, seeds=SEEDS[:2])  # never ran its third seed
    judge(archive, [archive.get(other)], archive.get(good), None, SEEDS)
    assert "no result" in archive.get(other).metrics["confirmation"]["vs_dpo"]["reason"]


def test_one_fresh_seed_is_never_significant(archive: Archive) -> None:
    rng = np.random.default_rng(2)
    good, dpo = scored_row(archive, "good", 0.9), scored_row(archive, "dpo", 0.8, "reference")
    _runs(archive, good, 0.95, rng, seeds=SEEDS[:1])
    _runs(archive, dpo, 0.05, rng, seeds=SEEDS[:1])
    (comp,) = judge(archive, [archive.get(good)], archive.get(dpo), None, SEEDS[:1])
    assert comp.verdict == stats.FAILED and "at least 2" in comp.reason


NAN_LOSS = """import math

import torch.nn.functional as F


def nan_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho) + math.nan
"""


def test_confirm_through_sandboxed_workers_stores_runs_and_fails_a_nan_candidate(tiny_task, archive) -> None:
    from discopop.execution.factory import make_executor
    from discopop.search.confirmation import confirm
    from discopop.search.loop import worker_spec

    task, cfg = tiny_task
    # One worker: the four fine-tunes are short, a second worker's start (torch, transformers, TRL) is not.
    cfg = {**cfg, "training": {**cfg["training"], "batch_size": 16, "threads": 1},
           "executor": {**cfg["executor"], "workers": 1}}
    dpo = archive.add(Candidate("dpo", DPO_FILE.read_text(), proposer="reference"), 0)
    archive.finish(dpo, "scored", fitness=0.1)
    bad = archive.add(Candidate("nan_loss", NAN_LOSS, proposer="evolution"), 1)
    archive.finish(bad, "scored", fitness=0.2, metrics={"learning_rate": 2e-5})
    settings = RunSettings.coerce(cfg)
    executor = make_executor(settings.executor, worker_spec(settings))
    try:
        (comp,) = confirm(archive, executor, base_seed=0, n_seeds=2, top_k=1)
    finally:
        executor.close()
    runs = archive.evaluations(split="confirm")
    assert sorted((e.candidate_id, e.seed, e.ok) for e in runs) == [
        (dpo, 1000, True), (dpo, 1001, True), (bad, 1000, False), (bad, 1001, False)]
    assert all(len(e.per_prompt) == len(task.prompts("confirm")) for e in runs if e.ok)
    assert {e.learning_rate for e in runs if e.candidate_id == bad} == {2e-5}
    assert comp.verdict == stats.FAILED and "nan_loss: seed 1000 failed" in comp.reason
    assert archive.get(bad).metrics["confirmation"]["fitness"] == [None, None]


def test_the_fresh_seed_noise_the_confirmation_stores_reaches_the_llms_prompt(archive: Archive) -> None:
    """Rows confirmed through ``judge`` (the real code path) give the LLM a measured noise level: the pooled std of
    the stored per-seed fitness, never "not yet measured"."""
    rng = np.random.default_rng(5)
    cand, dpo = scored_row(archive, "cand", 0.9), scored_row(archive, "dpo", 0.8, "reference")
    for row, acc in ((cand, 0.6), (dpo, 0.5)):
        _runs(archive, row, acc, rng)
    judge(archive, [archive.get(cand)], archive.get(dpo), None, SEEDS)
    cfg, _ = compose_settings([])
    facts = FitnessFacts.from_run(cfg, {}, archive.rows())
    per_seed = [archive.get(r).metrics["confirmation"]["fitness"] for r in (cand, dpo)]
    expected = math.sqrt(np.mean([np.var(f, ddof=1) for f in per_seed]))
    assert facts.noise_candidates == 2 and facts.noise_std == pytest.approx(expected)
    noise_line = next(line for line in facts.render().splitlines() if "noise level" in line)
    assert NOT_MEASURED not in noise_line and f"about {expected:.3f}" in noise_line
    # a confirmation archived before ``std`` was stored: the per-seed fitness still gives it
    old = {k: v for k, v in archive.get(cand).metrics["confirmation"].items() if k != "std"}
    archive.update_metrics(cand, {"confirmation": old})
    assert FitnessFacts.from_run(cfg, {}, archive.rows()).noise_std == pytest.approx(expected)


class _NothingToRun:
    """An executor for a confirmation whose runs are all stored: it must not be asked to train anything."""

    def run(self, jobs):
        assert not jobs
        return []


def test_dpo_competes_for_the_strongest_baseline_when_the_contenders_trail_it(archive: Archive) -> None:
    """hinge and lrml lead the search (so they are the contenders) but trail DPO on the fresh seeds: the candidate,
    above them and below DPO, must be held to DPO (vs_best None), not to the weaker of the two."""
    from discopop.search.confirmation import confirm

    rng = np.random.default_rng(7)
    cand = scored_row(archive, "cand", 0.95)
    dpo, hinge = scored_row(archive, "dpo", 0.80, "reference"), scored_row(archive, "hinge", 0.93, "reference")
    lrml = scored_row(archive, "lrml", 0.90, "reference")
    for row, acc in ((cand, 0.62), (dpo, 0.70), (hinge, 0.52), (lrml, 0.50)):
        _runs(archive, row, acc, rng)
    assert [r.name for r in best_references(archive, 2)] == ["hinge", "lrml"]
    confirm(archive, _NothingToRun(), 0, len(SEEDS), top_k=1, references=2)
    conf = archive.get(cand).metrics["confirmation"]
    assert conf["vs_best"] is None and conf["vs_dpo"]["baseline"] == "dpo" and conf["vs_dpo"]["delta"] < 0


def _search_runs(arch: Archive, row: int, per_seed: dict[int, np.ndarray], lr: float = 4e-5) -> None:
    """The row's search fine-tunes at its chosen rate: the given per-prompt fitness per seed."""
    for seed, scores in per_seed.items():
        arch.add_evaluation(Evaluation(row, seed, "search", lr, fitness=float(scores.mean()),
                                       reward=float(scores.mean()), kl=0.0, per_prompt=scores.tolist(),
                                       per_prompt_kl=[0.0] * scores.size))


def test_finalists_are_one_per_trained_outcome_not_one_loss_written_three_ways(archive: Archive) -> None:
    rng = np.random.default_rng(3)
    hard = {seed: rng.random(PROMPTS) for seed in (0, 500)}  # prompt difficulty dominates every row's scores
    best, twin, other, third = (scored_row(archive, n, f, lr=4e-5) for n, f in
                                (("best", 0.90), ("twin", 0.89), ("other", 0.88), ("third", 0.87)))
    _search_runs(archive, best, hard)
    _search_runs(archive, twin, {s: v + rng.normal(0, 1e-3, PROMPTS) for s, v in hard.items()})  # r ~ 0.99999
    _search_runs(archive, other, {s: v + rng.normal(0, 1e-2, PROMPTS) for s, v in hard.items()})  # r ~ 0.999
    _search_runs(archive, third, {s: v + rng.normal(0, 3e-2, PROMPTS) for s, v in hard.items()})
    assert [r.id for r in top_candidates(archive, 2)] == [best, other]
    assert [r.id for r in top_candidates(archive, 3)] == [best, other, third]


def test_rows_without_comparable_search_runs_are_never_passed_over(archive: Archive) -> None:
    rng = np.random.default_rng(4)
    scores = rng.random(PROMPTS)
    best, other_seed, other_rate, bare = (scored_row(archive, n, f, lr=4e-5) for n, f in
                                          (("best", 0.9), ("other_seed", 0.89), ("other_rate", 0.88), ("bare", 0.87)))
    _search_runs(archive, best, {0: scores})
    _search_runs(archive, other_seed, {500: scores})  # the same numbers, but no seed in common
    _search_runs(archive, other_rate, {0: scores}, lr=2e-5)  # a run at a rate the row did not choose
    assert [r.id for r in top_candidates(archive, 4)] == [best, other_seed, other_rate, bare]


def test_a_row_a_later_confirmation_leaves_out_keeps_its_verdicts_only_as_superseded(archive: Archive) -> None:
    """A resumed, longer run confirms new finalists: a finalist of the first confirmation that dropped out must not
    keep verdicts from another Holm family on the leaderboard (nor in the LLM's facts), yet nothing is lost."""
    rng = np.random.default_rng(1)
    first, second = scored_row(archive, "first", 0.9), scored_row(archive, "second", 0.91)
    dpo = scored_row(archive, "dpo", 0.8, "reference")
    for row, acc in ((first, 0.70), (second, 0.72), (dpo, 0.50)):
        _runs(archive, row, acc, rng)
    judge(archive, [archive.get(first)], archive.get(dpo), None, SEEDS)
    earlier = archive.get(first).metrics["confirmation"]
    assert earlier["vs_dpo"]["verdict"] == stats.BEATS
    judge(archive, [archive.get(second)], archive.get(dpo), None, SEEDS)
    dropped = archive.get(first).metrics
    assert "confirmation" not in dropped and dropped[SUPERSEDED] == earlier
    assert stats.confirmation_cells(dropped.get("confirmation")) == ("", "", "")
    assert archive.get(second).metrics["confirmation"]["vs_dpo"]["verdict"] == stats.BEATS
    assert "confirmation" in archive.get(dpo).metrics and SUPERSEDED not in archive.get(dpo).metrics
