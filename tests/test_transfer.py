"""``discopop evaluate``: losses across tasks, betas and fresh seeds, under the fair protocol and paired statistics.

Cheap tests work on stored results (the result cache filled with per-prompt scores, no training);
one test trains for real through the sandboxed workers on the tiny task.
"""

from __future__ import annotations

import csv
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from discopop.cli.main import main
from discopop.config import RunSettings
from discopop.execution.executors import JobResult
from discopop.execution.messages import TrainReply
from discopop.fitness import stats
from discopop.search.confirmation import fresh_seeds
from discopop.transfer.protocol import (
    CONFIRM_SPLIT,
    NOT_RUN,
    SEARCH_SPLIT,
    Cell,
    EvaluateError,
    LossSpec,
    ResultCache,
    RunKey,
    TransferEvaluation,
    arm_matrix,
    beta_config,
    own_beta_cells,
    resolve_losses,
    task_key,
)
from discopop.transfer.report import EDGE_MARK, rate_at_edge, write_csv, write_html, write_markdown

PROMPTS = 200
METHOD_FORM = '''
def doubled_sigmoid_loss(
    self,
    policy_chosen_logps: torch.FloatTensor,
    policy_rejected_logps: torch.FloatTensor,
    reference_chosen_logps: torch.FloatTensor,
    reference_rejected_logps: torch.FloatTensor,
) -> torch.FloatTensor:
    logits = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(2.0 * self.beta * logits)
'''


def _cfg(name: str = "addition") -> RunSettings:
    from discopop.config.compose import compose_settings

    cfg, _ = compose_settings([f"task={name}", "training.lr_grid=[1e-5,4e-5]"])
    return cfg


def _reply(accuracy: float, seed: int, lr: float) -> JobResult:
    """A train reply with exact-match rewards on shared prompts: one uniform draw per (seed, prompt) for all arms."""
    u = np.random.default_rng(seed).random(PROMPTS)
    rewards = (u < accuracy).astype(float).tolist()
    data = TrainReply(fitness=float(np.mean(rewards)), reward=float(np.mean(rewards)), kl=0.1 + accuracy, steps=4,
                      per_prompt=rewards, per_prompt_kl=[0.1] * PROMPTS, learning_rate=lr, kl_coef=0.0)
    return JobResult(job=None, ok=True, stage="train", reply=data, seconds=1.0)  # type: ignore[arg-type]


def _fill(cache: ResultCache, cfg: RunSettings, losses: list[LossSpec], beta: float, accuracy: dict[str, float],
          seeds: list[int], failed: dict[str, str] | None = None, search: dict[str, float] | None = None) -> None:
    """Store every fine-tune the protocol asks for: search runs peak at 4e-5 (at ``search`` accuracy where given),
    fresh-seed runs at that rate."""
    key_task, failed, search = task_key(beta_config(cfg, beta)), failed or {}, search or accuracy
    for loss in losses:
        for lr, shift in ((1e-5, -0.1), (4e-5, 0.0)):
            key = RunKey(loss.hash, key_task, beta, 0, SEARCH_SPLIT, lr)
            cache.put(key, _reply(search[loss.name] + shift, 0, lr))
        for seed in seeds:
            key = RunKey(loss.hash, key_task, beta, seed, CONFIRM_SPLIT, 4e-5)
            if loss.name in failed:
                cache.put(key, JobResult(job=None, ok=False, stage="train", error=failed[loss.name]))  # type: ignore
            else:
                cache.put(key, _reply(accuracy[loss.name], seed, 4e-5))


def _no_executor(cfg):
    raise AssertionError("everything was cached: no executor may be started")


def test_cached_results_are_reused_and_judged_with_the_shared_statistics(tmp_path: Path) -> None:
    cfg = _cfg()
    losses = resolve_losses(["dpo", "hinge", "lrml"])
    seeds = fresh_seeds(0, 3)
    cache = ResultCache(tmp_path / "results.sqlite")
    accuracy = {"dpo": 0.5, "hinge": 0.62, "lrml": 0.8}
    _fill(cache, cfg, losses, 0.1, accuracy, seeds, failed={"hinge": "loss is nan at step 3"})
    _fill(cache, cfg, losses, 2.5, accuracy, seeds)
    done: list[bool] = []
    from discopop.transfer.protocol import Progress

    cells = TransferEvaluation(losses, [cfg], [0.1, 2.5], 3, cache, _no_executor,
                               Progress(done=lambda *a: done.append(a[-1]))).run()
    assert done and all(done)  # every fine-tune came from the cache
    by = {(c.beta, c.loss.name): c for c in cells}
    lrml = by[(2.5, "lrml")]
    assert lrml.learning_rate == 4e-5 and lrml.search_fitness == pytest.approx(0.8, abs=0.1)
    # The same numbers through stats directly: each loss against DPO and the strongest other reference by fresh-seed
    # mean (lrml's is hinge; hinge's and DPO's is lrml), Holm over all five comparisons at this beta.
    mats = {n: arm_matrix(by[(2.5, n)].runs, seeds)[0] for n in accuracy}
    pairs = [("lrml", "dpo"), ("lrml", "hinge"), ("hinge", "dpo"), ("hinge", "lrml"), ("dpo", "lrml")]
    comps = [stats.compare(a, b, mats[a], mats[b]) for a, b in pairs]
    stats.decide(comps)
    assert lrml.vs_dpo["p_adjusted"] == pytest.approx(comps[0].p_adjusted)
    assert lrml.vs_dpo["verdict"] == stats.BEATS and lrml.vs_best["baseline"] == "hinge"
    assert lrml.vs_best["p_adjusted"] == pytest.approx(comps[1].p_adjusted)
    assert by[(2.5, "dpo")].vs_best["verdict"] == stats.BELOW  # DPO against the strongest other (lrml)
    # At 0.1 hinge's fresh seeds failed: its comparisons fail, never a smaller sample.
    hinge = by[(0.1, "hinge")]
    assert hinge.vs_dpo["verdict"] == stats.FAILED and "loss is nan" in hinge.vs_dpo["reason"]
    # hinge leads on search fitness but failed its fresh seeds, so it is nobody's strongest baseline: lrml's is DPO
    assert by[(0.1, "lrml")].best_baseline == "dpo" and by[(0.1, "lrml")].vs_best is None
    assert hinge.estimate["mean"] is None and by[(0.1, "dpo")].estimate["se"] > 0
    cache.close()


def test_each_loss_at_its_own_beta_is_chosen_on_the_search_prompts_and_judged_across_betas(tmp_path: Path) -> None:
    """DPO is best at 0.1, IPO at 2.5 (on the search prompts and the fresh seeds); hinge's search score is best at 0.1
    though its fresh seeds are better at 2.5: its beta is chosen on the search prompts, never on the seeds that judge
    it. Each is then compared at its own beta, paired per (seed, prompt) across betas, Holm over the new family."""
    cfg = _cfg()
    losses = resolve_losses(["dpo", "ipo", "hinge"])
    seeds = fresh_seeds(0, 3)
    cache = ResultCache(tmp_path / "results.sqlite")
    _fill(cache, cfg, losses, 0.1, {"dpo": 0.6, "ipo": 0.55, "hinge": 0.5}, seeds,
          search={"dpo": 0.6, "ipo": 0.55, "hinge": 0.7})
    _fill(cache, cfg, losses, 2.5, {"dpo": 0.5, "ipo": 0.75, "hinge": 0.7}, seeds,
          search={"dpo": 0.5, "ipo": 0.75, "hinge": 0.6})
    cells = TransferEvaluation(losses, [cfg], [0.1, 2.5], 3, cache, _no_executor).run()
    own = {c.loss.name: c for c in own_beta_cells(cells)}
    assert {n: c.beta for n, c in own.items()} == {"dpo": 0.1, "ipo": 2.5, "hinge": 0.1}
    by = {(c.beta, c.loss.name): c for c in cells}
    mats = {n: arm_matrix(own[n].runs, seeds)[0] for n in own}
    comps = [stats.compare("ipo", "dpo", mats["ipo"], mats["dpo"]), stats.compare("hinge", "dpo", mats["hinge"],
             mats["dpo"]), stats.compare("hinge", "ipo", mats["hinge"], mats["ipo"]),
             stats.compare("dpo", "ipo", mats["dpo"], mats["ipo"])]
    stats.decide(comps)
    assert own["ipo"].vs_dpo["delta"] == pytest.approx(comps[0].delta) and own["ipo"].vs_dpo["delta"] > 0.1
    assert own["ipo"].vs_dpo["p_adjusted"] == pytest.approx(comps[0].p_adjusted)
    assert own["hinge"].best_baseline == "ipo" and own["hinge"].vs_best["p_adjusted"] == pytest.approx(
        comps[2].p_adjusted)
    # the per-beta cells keep their own verdicts (at 2.5 DPO is the weak one; at 0.1 IPO trails it)
    assert by[(2.5, "ipo")].vs_dpo["delta"] > 0.2 and by[(0.1, "ipo")].vs_dpo["delta"] < 0
    assert own["ipo"] is not by[(2.5, "ipo")] and own["ipo"].estimate["mean"] == by[(2.5, "ipo")].estimate["mean"]
    assert own_beta_cells([c for c in cells if c.beta == 0.1]) == []  # one beta: nothing to choose
    write_markdown(cells, tmp_path / "results.md", list(own.values()))
    text = (tmp_path / "results.md").read_text()
    assert "each loss at its own β" in text and "| ipo | 2.5 |" in text
    cache.close()


def test_the_strongest_baseline_is_the_reference_with_the_best_fresh_seed_mean(tmp_path: Path) -> None:
    """hinge leads on the one search seed, lrml on the fresh seeds: a candidate is held to lrml, not hinge."""
    cfg = _cfg()
    losses = resolve_losses(["dpo", "hinge", "lrml", "ipo"])
    losses = [replace(loss, reference=loss.name != "ipo") for loss in losses]  # ipo plays the discovered loss
    seeds = fresh_seeds(0, 3)
    cache = ResultCache(tmp_path / "results.sqlite")
    _fill(cache, cfg, losses, 0.5, {"dpo": 0.5, "hinge": 0.6, "lrml": 0.8, "ipo": 0.7}, seeds,
          search={"dpo": 0.5, "hinge": 0.9, "lrml": 0.8, "ipo": 0.7})
    cells = {c.loss.name: c for c in TransferEvaluation(losses, [cfg], [0.5], 3, cache, _no_executor).run()}
    assert cells["hinge"].search_fitness > cells["lrml"].search_fitness
    assert cells["ipo"].best_baseline == "lrml" and cells["ipo"].vs_best["baseline"] == "lrml"
    assert cells["ipo"].vs_best["delta"] < 0 < cells["ipo"].estimate["mean"] - cells["hinge"].estimate["mean"]
    assert cells["lrml"].best_baseline == "hinge"  # a reference is held to the best of the others
    cache.close()


def test_report_only_marks_missing_work_and_writes_csv_and_html(tmp_path: Path) -> None:
    cfg = _cfg()
    losses = resolve_losses(["dpo", "lrml"])
    cache = ResultCache(tmp_path / "results.sqlite")
    _fill(cache, cfg, losses, 0.5, {"dpo": 0.5, "lrml": 0.7}, fresh_seeds(0, 2))
    cells = TransferEvaluation(losses, [cfg], [0.5, 1.0], 2, cache, _no_executor, train=False).run()
    missing = [c for c in cells if c.beta == 1.0]
    assert all(c.estimate["failed"] == NOT_RUN and c.learning_rate is None for c in missing)
    write_csv(cells, tmp_path / "results.csv")
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert len(rows) == 4 and {r["loss"] for r in rows} == {"dpo", "lrml"}
    done = next(r for r in rows if r["loss"] == "lrml" and r["beta"] == "0.5")
    assert done["vs_dpo_verdict"] in (stats.BEATS, stats.WITHIN) and float(done["mean"]) > 0.6
    page = write_html(cells, tmp_path / "report.html", {"grid": "1e-05, 4e-05"}).read_text()
    assert page.count("data:image/png;base64,") == 2  # score vs beta and the reward-KL frontier, embedded
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)  # self-contained
    assert "not run yet" in page
    table = write_markdown(cells, tmp_path / "results.md").read_text()
    assert "| lrml |" in table and "not run" in table and "β = 0.5" in table
    assert done["lr_at_edge"] == "yes" and f"(4e-05{EDGE_MARK})" in table  # 4e-5 tops the 2-point grid
    cache.close()


def test_losses_resolve_from_names_files_and_method_form(tmp_path: Path) -> None:
    path = tmp_path / "doubled.py"
    path.write_text(METHOD_FORM)
    losses = resolve_losses(["lrml", str(path), "lrml"])
    assert [s.name for s in losses] == ["dpo", "lrml", "doubled"]  # DPO added, the repeat evaluated once
    assert losses[0].reference and not losses[2].reference
    bad = tmp_path / "bad.py"
    bad.write_text("import os\ndef f(a, b, c, d, beta):\n    return a\n")
    with pytest.raises(EvaluateError, match="static check"):
        resolve_losses([str(bad)])
    with pytest.raises(EvaluateError, match="neither a loss file nor a reference"):
        resolve_losses(["no_such_loss"])


def test_contract_v2_references_resolve_by_name() -> None:
    """The v2 references (proposals/v2/) are named as in ``baselines``: references, at their files' own code."""
    losses = resolve_losses(["simpo", "ipo_norm"])
    assert [s.name for s in losses] == ["dpo", "simpo", "ipo_norm"]
    assert all(s.reference for s in losses)
    assert "chosen_lengths" in losses[1].code and "GAMMA = " in losses[1].code


def test_constants_add_each_references_declared_constants_moved_both_ways() -> None:
    """``--constants``: SimPO's GAMMA and AlphaPO's ALPHA and GAMMA each one step (x3) down and up, as references of
    their own right after their default; DPO and hinge declare none and stay alone; without it, nothing is added."""
    plain_names = [s.name for s in resolve_losses(["simpo", "hinge", "alphapo"])]
    assert plain_names == ["dpo", "simpo", "hinge", "alphapo"]
    losses = resolve_losses(["simpo", "hinge", "alphapo"], constants=True)
    names = [s.name for s in losses]
    assert names[:4] == ["dpo", "simpo", "simpo_gamma_0_1667", "simpo_gamma_1_5"]
    assert names[4] == "hinge" and names[5] == "alphapo" and len(names) == 10
    assert all(s.reference for s in losses)
    assert len({s.hash for s in losses}) == len(losses)  # each variant is other code
    default = re.search(r"^GAMMA = (.+)$", losses[1].code, re.M).group(1)
    assert float(default) == 0.5
    assert re.search(r"^GAMMA = 1\.5 ", losses[3].code, re.M)
    assert all(n.startswith("alphapo_alpha_") or n.startswith("alphapo_gamma_") for n in names[6:])


def test_a_reference_at_moved_constants_is_judged_against_its_defaults_in_the_same_holm_family(
        tmp_path: Path) -> None:
    """``--constants``: each variant is also compared with the reference at its default constants (paired, Holm over
    every comparison at the beta); where the defaults are already its strongest other reference the one test serves
    both columns (counted once); the defaults themselves get no such row. The CSV names the default."""
    cfg = _cfg()
    losses = resolve_losses(["simpo"], constants=True)
    names = [s.name for s in losses]
    assert names == ["dpo", "simpo", "simpo_gamma_0_1667", "simpo_gamma_1_5"]
    assert losses[2].default_hash == losses[3].default_hash == losses[1].hash and losses[1].default_hash is None
    seeds = fresh_seeds(0, 3)
    cache = ResultCache(tmp_path / "results.sqlite")
    accuracy = {"dpo": 0.5, "simpo": 0.7, "simpo_gamma_0_1667": 0.55, "simpo_gamma_1_5": 0.9}
    _fill(cache, cfg, losses, 0.5, accuracy, seeds)
    cells = TransferEvaluation(losses, [cfg], [0.5], 3, cache, _no_executor).run()
    by = {c.loss.name: c for c in cells}
    low, high, default = by["simpo_gamma_0_1667"], by["simpo_gamma_1_5"], by["simpo"]
    assert default.vs_default is None and default.default_name is None and by["dpo"].vs_default is None
    assert low.default_name == high.default_name == "simpo"
    assert low.best_baseline == "simpo_gamma_1_5" and low.vs_default["baseline"] == "simpo"
    assert low.vs_default["verdict"] == stats.BELOW and low.vs_default["delta"] == pytest.approx(-0.15, abs=0.03)
    assert high.best_baseline == "simpo" and high.vs_default is high.vs_best  # one test, not two
    assert high.vs_default["verdict"] == stats.BEATS
    # the same p through stats directly: 8 comparisons (dpo 1, simpo 2, low 3, high 2), one Holm family
    mats = {n: arm_matrix(by[n].runs, seeds)[0] for n in accuracy}
    pairs = [("dpo", "simpo_gamma_1_5"), ("simpo", "dpo"), ("simpo", "simpo_gamma_1_5"),
             ("simpo_gamma_0_1667", "dpo"), ("simpo_gamma_0_1667", "simpo_gamma_1_5"),
             ("simpo_gamma_0_1667", "simpo"), ("simpo_gamma_1_5", "dpo"), ("simpo_gamma_1_5", "simpo")]
    comps = [stats.compare(a, b, mats[a], mats[b]) for a, b in pairs]
    stats.decide(comps)
    assert low.vs_default["family"] == 8 and low.vs_default["p_adjusted"] == pytest.approx(comps[5].p_adjusted)
    rows = {r["loss"]: r for r in csv.DictReader(open(write_csv(cells, tmp_path / "results.csv")))}
    assert rows["simpo_gamma_0_1667"]["variant_of"] == "simpo" and rows["simpo"]["variant_of"] == ""
    assert rows["simpo_gamma_0_1667"]["vs_default_verdict"] == stats.BELOW and rows["dpo"]["vs_default_verdict"] == ""
    assert float(rows["simpo_gamma_1_5"]["vs_default_delta"]) == pytest.approx(high.vs_best["delta"], abs=1e-5)
    cache.close()


@pytest.mark.parametrize("args, expected", [
    (["no_such_loss"], "neither a loss file nor a reference"),
    (["dpo", "--betas", "0.1,-1"], "--betas must be"),
    (["dpo", "--betas", "abc"], "--betas must be"),
    (["dpo", "--seeds", "0"], "--seeds must be >= 1"),
    (["dpo", "--tasks", "nosuchtask"], "nosuchtask"),
    (["dpo", "--top-k", "2"], "--top-k needs --run"),
    (["dpo", "--run", "/nonexistent/run"], "not a discopop run directory"),
    (["dpo", "training.nosuchkey=1"], "nosuchkey"),
    (["--betas", "0.1", "no_such_loss"], "neither a loss file nor a reference"),  # items may follow options
    (["--betas", "0.1", "dpo", "training.nosuchkey=1"], "nosuchkey"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, expected) -> None:
    assert main(["evaluate", *args, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1


@pytest.mark.slow  # two sandboxed workers and six tiny fine-tunes: ~1 min on an idle 2-core machine
def test_real_fine_tunes_through_the_sandbox_then_resume_runs_nothing(tiny_task, tmp_path, capsys) -> None:
    """2 losses x 1 rate x (1 search + 2 fresh seeds) = 6 real fine-tunes; the re-run takes them all from the cache."""
    from conftest import TINY_TASK

    loss = tmp_path / "doubled.py"
    loss.write_text(METHOD_FORM)
    args = ["evaluate", str(loss), *TINY_TASK, "training.batch_size=16", "training.epochs=1", "training.threads=1",
            "training.lr_grid=[2e-5]", "--betas", "0.5", "--seeds", "2", "--quiet", "-o", str(tmp_path / "out")]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "6 fine-tunes run, 0 cached" in " ".join(first.split())
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert {r["loss"] for r in rows} == {"dpo", "doubled"}
    assert all(r["learning_rate"] == "2e-05" and len(r["fitness_per_seed"].split()) == 2 for r in rows)
    assert next(r for r in rows if r["loss"] == "doubled")["vs_dpo_verdict"] in (
        stats.BEATS, stats.BELOW, stats.WITHIN)
    assert main(args) == 0
    assert "0 fine-tunes run, 6 cached" in " ".join(capsys.readouterr().out.split())
    assert list(csv.DictReader(open(tmp_path / "out" / "results.csv"))) == rows


def test_a_runs_top_k_are_its_best_scored_non_reference_rows(tmp_path: Path) -> None:
    from discopop.archive import Archive
    from discopop.proposers.base import Candidate

    archive = Archive(tmp_path / "archive.sqlite")
    body = ("import torch.nn.functional as F\n\ndef {n}(policy_chosen_logps, policy_rejected_logps, "
            "reference_chosen_logps, reference_rejected_logps, beta):\n    return -F.logsigmoid({k} * beta * "
            "(policy_chosen_logps - policy_rejected_logps - reference_chosen_logps + reference_rejected_logps))\n")
    for name, fitness, proposer in (("low", 0.5, "evolution"), ("high", 0.9, "evolution"), ("mid", 0.7, "openai"),
                                    ("ref", 0.99, "reference")):
        row = archive.add(Candidate(name, body.format(n=name, k=len(name)), proposer=proposer), 1)
        archive.finish(row, "scored", fitness=fitness)
    archive.close()
    losses = resolve_losses([], tmp_path, top_k=2)
    assert [s.name for s in losses] == ["dpo", "high", "mid"] and losses[1].origin.endswith("#2")


def test_a_rate_inside_the_grid_is_not_marked_as_an_edge() -> None:
    cell = Cell("addition", 0.5, resolve_losses(["dpo"])[0])
    for lr, fitness in ((1e-5, 0.7), (2e-5, 0.9), (4e-5, 0.8)):
        cell.sweep.add(lr, True, {"fitness": fitness}, "train", None)
    cell.learning_rate = 2e-5
    assert not rate_at_edge(cell)
    cell.learning_rate = 1e-5
    assert rate_at_edge(cell)
    cell.sweep.add(5e-6, False, {}, "train", "nan loss")  # a failed lower rate still widens the grid tried
    assert not rate_at_edge(cell)


def _run_dir(tmp_path: Path) -> Path:
    """A run at training.beta 0.5 whose best candidate chose beta 1.0 (its beta axis) and rate 2e-5."""
    import yaml

    from discopop.archive import Archive
    from discopop.proposers.base import Candidate

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"training": {"beta": 0.5}}))
    archive = Archive(run / "archive.sqlite")
    code = ("import torch.nn.functional as F\n\ndef doubled(policy_chosen_logps, policy_rejected_logps, "
            "reference_chosen_logps, reference_rejected_logps, beta):\n    return -F.logsigmoid(2.0 * beta * "
            "(policy_chosen_logps - policy_rejected_logps - reference_chosen_logps + reference_rejected_logps))\n")
    row = archive.add(Candidate("doubled", code, proposer="evolution"), 1)
    archive.finish(row, "scored", fitness=0.9, metrics={"beta": 1.0, "learning_rate": 2e-5})
    archive.close()
    return run


class _Recorder:
    """A stand-in executor factory: records (cell beta, job beta, job rate, loss) and answers every job."""

    def __init__(self) -> None:
        self.jobs: list[tuple[float, float | None, float, str]] = []

    def __call__(self, cfg):
        recorder = self

        class _Executor:
            def run(self, jobs):
                for job in jobs:
                    recorder.jobs.append((cfg.training.beta, job.beta, job.learning_rate, job.code))
                    reply = _reply(0.6, job.seed, job.learning_rate)
                    yield replace(reply, job=job)

            def close(self) -> None:
                pass

        return _Executor()


def test_a_runs_candidate_keeps_its_beta_and_rate_unless_overridden(tmp_path: Path, monkeypatch, capsys) -> None:
    """Without --betas/--tune-lr the run's row trains at its own beta (1.0, not the run's 0.5 nor the config's) and
    its own rate only; the command says so. With both overrides it trains at the given beta over the whole grid."""
    import discopop.cli.evaluate as evaluate_cli

    run = _run_dir(tmp_path)
    (spec,) = [s for s in resolve_losses([], run, top_k=1) if not s.reference]
    assert (spec.beta, spec.learning_rate) == (1.0, 2e-5)
    recorder = _Recorder()
    monkeypatch.setattr(evaluate_cli, "executor_factory", lambda out: recorder)
    common = ["evaluate", "--run", str(run), "--top-k", "1", "--tasks", "addition", "training.lr_grid=[1e-5,4e-5]",
              "--seeds", "2", "--quiet"]
    assert main([*common, "-o", str(tmp_path / "a")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "beta 1 (its run's), lr 2e-05 (its run's)" in out and "at beta 0.5," in out
    row_jobs = [j for j in recorder.jobs if j[3] == spec.code]
    dpo_jobs = [j for j in recorder.jobs if j[3] != spec.code]
    assert row_jobs and all(j[1] == 1.0 and j[2] == 2e-5 for j in row_jobs) and len(row_jobs) == 1 + 2
    assert {j[0] for j in recorder.jobs} == {0.5} and {j[1] for j in dpo_jobs} == {None}  # the cell: the run's beta
    assert {j[2] for j in dpo_jobs} == {1e-5, 4e-5}  # the reference is tuned on the grid as before
    rows = {r["loss"]: r for r in csv.DictReader(open(tmp_path / "a" / "results.csv"))}
    assert rows["doubled"]["trained_beta"] == "1" and rows["doubled"]["lr_from"] == "run"
    assert rows["doubled"]["learning_rate"] == "2e-05" and rows["dpo"]["trained_beta"] == "0.5"

    recorder.jobs.clear()
    assert main([*common, "--betas", "0.25", "--tune-lr", "-o", str(tmp_path / "b")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--betas overrides its run's" in out and "--tune-lr overrides its run's" in out
    row_jobs = [j for j in recorder.jobs if j[3] == spec.code]
    assert all(j[0] == 0.25 and j[1] is None for j in row_jobs) and {j[2] for j in row_jobs} >= {1e-5, 4e-5}


def test_the_constants_flag_trains_each_variant_on_the_grid_and_reports_it(tmp_path: Path, monkeypatch) -> None:
    """``discopop evaluate simpo --constants``: SimPO at GAMMA 0.5, 0.1667 and 1.5, each tuned on the whole grid and
    confirmed, each a row of the CSV; the command line written to the report keeps the flag."""
    import discopop.cli.evaluate as evaluate_cli

    recorder = _Recorder()
    monkeypatch.setattr(evaluate_cli, "executor_factory", lambda out: recorder)
    args = ["evaluate", "simpo", "--constants", "--tasks", "addition", "--betas", "0.5", "--seeds", "2", "--quiet",
            "training.lr_grid=[1e-5,4e-5]", "-o", str(tmp_path / "c")]
    assert main(args) == 0
    rows = {r["loss"]: r for r in csv.DictReader(open(tmp_path / "c" / "results.csv"))}
    assert set(rows) == {"dpo", "simpo", "simpo_gamma_0_1667", "simpo_gamma_1_5"}
    assert all(rows[n]["origin"] == "reference" for n in rows)
    codes = {j[3] for j in recorder.jobs}
    assert len(codes) == 4 and len(recorder.jobs) == 4 * (2 + 2)  # 2 grid points + 2 fresh seeds each
    assert "--constants" in (tmp_path / "c" / "report.html").read_text()
    assert not (tmp_path / "c" / "own_beta.csv").exists()  # one beta: no own-beta table


def test_two_betas_write_the_own_beta_table_beside_the_per_beta_one(tmp_path: Path, monkeypatch) -> None:
    import discopop.cli.evaluate as evaluate_cli

    monkeypatch.setattr(evaluate_cli, "executor_factory", lambda out: _Recorder())
    args = ["evaluate", "simpo", "--tasks", "addition", "--betas", "0.1,0.5", "--seeds", "2", "--quiet",
            "training.lr_grid=[1e-5,4e-5]", "-o", str(tmp_path / "o")]
    assert main(args) == 0
    per_beta = list(csv.DictReader(open(tmp_path / "o" / "results.csv")))
    own = {r["loss"]: r for r in csv.DictReader(open(tmp_path / "o" / "own_beta.csv"))}
    assert len(per_beta) == 4 and set(own) == {"dpo", "simpo"}
    assert all(r["beta"] in ("0.1", "0.5") for r in own.values()) and own["simpo"]["vs_dpo_verdict"]
    assert "each loss at its own β" in (tmp_path / "o" / "report.html").read_text()


def test_tuning_seeds_choose_the_rate_on_their_mean_and_reuse_the_run_seeds_runs(tmp_path: Path) -> None:
    """Seed 0 alone prefers 1e-5; over seeds 0, 1, 2 the mean prefers 4e-5. The run seed's runs are the ones a
    one-seed evaluation stored (read, not re-trained); the two more seeds per rate are new fine-tunes."""
    cfg = _cfg()
    (dpo,) = resolve_losses(["dpo"])
    cache = ResultCache(tmp_path / "results.sqlite")
    key_task = task_key(beta_config(cfg, 0.5))
    search = {(1e-5, 0): 0.70, (4e-5, 0): 0.65, (1e-5, 1): 0.55, (4e-5, 1): 0.66, (1e-5, 2): 0.56, (4e-5, 2): 0.64}
    for (lr, seed), acc in search.items():
        if seed == 0:
            cache.put(RunKey(dpo.hash, key_task, 0.5, seed, SEARCH_SPLIT, lr), _reply(acc, seed, lr))
    asked: list[tuple[int, float, str]] = []

    def factory(cfg):
        class _Executor:
            def run(self, jobs):
                for job in jobs:
                    asked.append((job.seed, job.learning_rate, job.split))
                    acc = search.get((job.learning_rate, job.seed), 0.6)
                    yield replace(_reply(acc, job.seed, job.learning_rate), job=job)

            def close(self) -> None:
                pass

        return _Executor()

    one = TransferEvaluation([dpo], [cfg], [0.5], 2, cache, factory, train=False).run()[0]
    assert one.learning_rate == 1e-5  # the run seed alone (report-only: nothing trained)
    (cell,) = TransferEvaluation([dpo], [cfg], [0.5], 2, cache, factory, tune_seeds=3).run()
    assert cell.learning_rate == 4e-5
    fitness = {lr: np.mean([_reply(search[(lr, s)], s, lr).trained.fitness for s in (0, 1, 2)]) for lr in (1e-5, 4e-5)}
    assert cell.search_fitness == pytest.approx(fitness[4e-5]) and fitness[4e-5] > fitness[1e-5]
    tuned = sorted((s, lr) for s, lr, split in asked if split == SEARCH_SPLIT)
    assert tuned == [(1, 1e-5), (1, 4e-5), (2, 1e-5), (2, 4e-5)]  # seed 0's runs came from the cache
    assert sorted(s for s, _, split in asked if split == CONFIRM_SPLIT) == fresh_seeds(0, 2)
    with pytest.raises(EvaluateError, match="--tune-seeds"):
        TransferEvaluation([dpo], [cfg], [0.5], 2, cache, factory, tune_seeds=0)
    cache.close()


def test_flip_rate_references_run_at_each_tasks_own_rate_and_say_it(tmp_path: Path, monkeypatch) -> None:
    """``evaluate rdpo cdpo`` on two tasks: each built at that task's label-flip rate (addition's 0.25, the hard-flip
    variant's uniform 0), as discover builds them, never at the files' 0.1; the names carry the rate, and the code
    (the cache key) is not the file's, so a result cached at 0.1 is never read as one at the task's rate. The
    other losses are the same code on both tasks."""
    import discopop.cli.evaluate as evaluate_cli
    from discopop.config.compose import compose_settings
    from discopop.contract.losses import code_hash
    from discopop.proposers.reference import reference_candidate

    trained: list[tuple[str, str]] = []

    def factory(cfg):
        class _Executor:
            def run(self, jobs):
                for job in jobs:
                    trained.append((cfg.task.name, job.code))
                    yield replace(_reply(0.6, job.seed, job.learning_rate), job=job)

            def close(self) -> None:
                pass

        return _Executor()

    monkeypatch.setattr(evaluate_cli, "executor_factory", lambda out: factory)
    args = ["evaluate", "rdpo", "cdpo", "hinge", "--tasks", "addition,addition_hardflip", "--betas", "0.5",
            "--seeds", "2", "--quiet", "training.lr_grid=[1e-5,4e-5]", "-o", str(tmp_path / "e")]
    assert main(args) == 0
    rows = list(csv.DictReader(open(tmp_path / "e" / "results.csv")))
    names = {task: {r["loss"] for r in rows if r["task"] == task} for task in ("addition", "addition_hardflip")}
    assert names["addition"] == {"dpo", "rdpo_eps_0_25", "cdpo_eps_0_25", "hinge"}
    assert names["addition_hardflip"] == {"dpo", "rdpo_eps_0", "cdpo_eps_0", "hinge"}
    codes = {task: {code for t, code in trained if t == task} for task in names}
    rates = {task: sorted(float(m) for code in codes[task]
                          for m in re.findall(r"^(?:FLIP_RATE|LABEL_SMOOTHING) = ([0-9.]+)", code, re.M))
             for task in codes}
    assert rates == {"addition": [0.25, 0.25], "addition_hardflip": [0.0, 0.0]}
    files = {code_hash(reference_candidate(n).code) for n in ("rdpo", "cdpo")}  # the files' 0.1
    assert not files & {code_hash(c) for c in codes["addition"] | codes["addition_hardflip"]}
    shared = {code_hash(reference_candidate(n).code) for n in ("dpo", "hinge")}
    assert all(shared <= {code_hash(c) for c in codes[task]} for task in codes)
    assert len(codes["addition"] & codes["addition_hardflip"]) == 2  # dpo and hinge: one cache entry for both
    from discopop.tasks import label_flip_rate

    diagnostic, _ = compose_settings(["task=diagnostic", "task.preset=label_noise"])
    assert label_flip_rate(diagnostic.task) == pytest.approx(0.3)  # the tier's rate, from its task facts
