"""``training.tune_seeds``: the diagnostic tier chooses a rate on seeds that do not rank the row (fitness/tuning.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from discopop.config import ConfigError, RunSettings
from discopop.config.compose import compose
from discopop.contract.losses import load_loss
from discopop.execution.executors import Job, JobResult
from discopop.execution.messages import TrainReply, parse_reply
from discopop.fitness.diagnostic_tune import TUNE_SEED_OFFSET, DiagnosticTuner, fine_tune, tuning_seeds
from discopop.fitness.result_store import ResultCache, RunKey
from discopop.fitness.tuning import LrProtocol, Sweep, split_fitness
from discopop.search.confirmation import fresh_seeds
from discopop.search.seed_race import RacePolicy
from discopop.tasks.diagnostic import split_contexts

REPO = Path(__file__).resolve().parent.parent
DPO_SOURCE = (REPO / "discopop" / "proposals" / "dpo.py").read_text()
SMALL = ["task.contexts=64", "task.eval_contexts=64", "task.steps=30", "task.batch=64",
         "task.extra_confirm_contexts=0", "task.extra_search_contexts=0"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one torch thread


def _reply(per_prompt: list[float], tune_fitness: float | None = None, lr: float = 0.01) -> TrainReply:
    mean = sum(per_prompt) / len(per_prompt)
    return TrainReply(fitness=mean, reward=mean, kl=0.0, steps=1, per_prompt=per_prompt,
                      per_prompt_kl=[0.0] * len(per_prompt), kl_coef=0.0, learning_rate=lr, tune_fitness=tune_fitness)


@pytest.mark.parametrize("base", [0, 1, 7, 100, 2000])
def test_tuning_seeds_are_deterministic_and_disjoint_from_every_other_seed_of_the_run(base: int) -> None:
    seeds = tuning_seeds(base, 4)
    assert seeds == tuning_seeds(base, 4) and len(set(seeds)) == 4 and tuning_seeds(base, 0) == []
    assert seeds[:2] == tuning_seeds(base, 2)  # more tuning seeds add to the fewer, they do not redraw them
    others = {base, *RacePolicy(max_seeds=50).extra_seeds(base), *fresh_seeds(base, 100)}
    assert not set(seeds) & others
    assert seeds[0] == base + TUNE_SEED_OFFSET


def test_split_fitness_uses_the_tuning_seeds_to_choose_and_every_prompt_to_rank() -> None:
    old = _reply([1.0, 0.0, 1.0, 0.0])
    assert split_fitness(old) == (1.0, 0.0)  # no tuning seeds: even and odd prompts, as before
    new = _reply([1.0, 0.0, 1.0, 0.0], tune_fitness=0.25)
    assert split_fitness(new) == (0.25, 0.5)
    assert LrProtocol(grid=(0.01,), screen_margin=None, tune_seeds=2).rank(old) == 0.5  # a race seed: every prompt
    assert LrProtocol(grid=(0.01,), screen_margin=None).rank(old) == 0.0


def test_with_tuning_seeds_the_sweep_picks_the_rate_they_favour_not_the_ranking_seeds() -> None:
    sweep = Sweep()
    sweep.add(0.01, True, _reply([0.9, 0.9], tune_fitness=0.2, lr=0.01), "train", None)  # the ranking seed's pick
    sweep.add(0.03, True, _reply([0.4, 0.4], tune_fitness=0.6, lr=0.03), "train", None)
    assert sweep.best()[0] == 0.03 and sweep.ranked_fitness() == pytest.approx(0.4)
    summary = sweep.summary((0.01, 0.03))
    assert summary["lr_sweep"] == {"0.01": 0.2, "0.03": 0.6} and summary["fitness_tune"] == 0.6


def test_the_reply_field_is_optional_on_the_wire() -> None:
    old = _reply([1.0, 0.0])
    assert "tune_fitness" not in old.to_wire()  # k = 0: the reply a worker sent before
    assert parse_reply("train", old.to_wire()) == old
    new = _reply([1.0, 0.0], tune_fitness=0.3)
    assert parse_reply("train", new.to_wire()).tune_fitness == 0.3
    assert not _reply([1.0, 0.0], tune_fitness=float("nan")).finite()


def test_the_diagnostic_tuner_scores_the_tuning_seeds_on_every_search_context() -> None:
    cfg, _ = compose(["task=diagnostic", *SMALL])
    run = RunSettings.coerce(cfg)
    tuner = DiagnosticTuner(run.task, run.training, kl_coef=run.task.kl_coef)
    dpo = load_loss(DPO_SOURCE)  # a trusted reference file
    plain = tuner.run(dpo, seed=5, learning_rate=0.1)
    tuned = tuner.run(dpo, seed=5, learning_rate=0.1, tune_seeds=2)
    assert "tune_fitness" not in plain
    for key in ("fitness", "per_prompt", "per_prompt_kl", "per_prompt_greedy"):  # the ranking seed's, unchanged
        assert tuned[key] == plain[key]
    part = split_contexts(tuner.setting, "search")
    expected = [sum(r.per_context[part]) / len(r.per_context[part])
                for r in (fine_tune(dpo, tuner.setting, seed=s, lr=0.1) for s in (2005, 2006))]
    assert tuned["tune_fitness"] == pytest.approx(sum(expected) / 2, abs=1e-12)
    assert tuned["tune_fitness"] != pytest.approx(plain["fitness"], abs=1e-6)


def test_on_a_real_grid_the_tuning_seeds_can_overrule_the_ranking_seed() -> None:
    """Find, on the bandit itself, a seed whose own search contexts would pick another rate than its tuning seeds
    (the noise the rule exists to keep out); the sweep must follow the tuning seeds."""
    cfg, _ = compose(["task=diagnostic", "task.preset=mixed_quality", *SMALL])
    run = RunSettings.coerce(cfg)
    tuner = DiagnosticTuner(run.task, run.training, kl_coef=run.task.kl_coef)
    dpo = load_loss(DPO_SOURCE)
    grid = (0.01, 0.03, 0.1)
    for seed in range(6):
        replies = {lr: TrainReply(**tuner.run(dpo, seed=seed, learning_rate=lr, tune_seeds=2)) for lr in grid}
        by_rank = max(grid, key=lambda lr: split_fitness(replies[lr])[1])
        by_tune = max(grid, key=lambda lr: replies[lr].tune_fitness)
        if by_rank != by_tune:
            break
    else:
        pytest.fail("no seed in 0-5 where the ranking seed and the tuning seeds disagree: widen the search")
    sweep = Sweep()
    for lr, reply in replies.items():
        sweep.add(lr, True, reply, "train", None)
    assert sweep.best()[0] == by_tune != by_rank
    assert sweep.ranked_fitness() == pytest.approx(split_fitness(replies[by_tune])[1])


def test_the_setting_defaults_and_its_refusal_on_a_fine_tuned_model() -> None:
    diag, _ = compose(["task=diagnostic"])
    assert RunSettings.coerce(diag).training.tune_seeds == 3  # conf/training/diagnostic.yaml
    assert LrProtocol.from_config(RunSettings.coerce(diag).training).tune_seeds == 3
    explicit, _ = compose(["task=diagnostic", "training.tune_seeds=0"])
    assert LrProtocol.from_config(RunSettings.coerce(explicit).training).tune_seeds == 0  # an explicit value wins
    addition, _ = compose(["task=addition"])
    assert LrProtocol.from_config(RunSettings.coerce(addition).training).tune_seeds == 0
    RunSettings.coerce(addition).check()
    addition["training"]["tune_seeds"] = 2
    with pytest.raises(ConfigError, match="tune_seeds=2 needs task=diagnostic"):
        RunSettings.coerce(addition).check()
    del diag["training"]["tune_seeds"]  # --resume of a run recorded before the key: the old protocol
    assert not RunSettings.coerce(diag).training.tune_seeds


def test_a_stored_reply_without_tuning_seeds_does_not_answer_a_job_that_asks_for_them(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "results.sqlite")
    key = RunKey("hash", "diagnostic-x", 0.1, 0, "search", 0.03)
    plain_job = Job(1, "code", "train", 0, learning_rate=0.03)
    cache.put(key, JobResult(plain_job, True, "train", reply=_reply([0.5, 0.5], lr=0.03)))
    assert cache.get_result(key, plain_job) is not None
    assert cache.get_result(key, Job(1, "code", "train", 0, learning_rate=0.03, tune_seeds=2)) is None
    cache.put(key, JobResult(plain_job, True, "train", reply=_reply([0.5, 0.5], tune_fitness=0.4, lr=0.03)))
    found = cache.get_result(key, Job(1, "code", "train", 0, learning_rate=0.03, tune_seeds=2))
    assert found is not None and found.trained.tune_fitness == 0.4
    cache.close()
