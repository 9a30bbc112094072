"""The diagnostic tier's fitness prices KL by default (issue 24, item 2): a policy that gains reward only by
moving further from the reference does not win, and every reply reports reward and KL apart."""

from __future__ import annotations

from pathlib import Path

import pytest

from discopop.config import TrainingSettings, task_settings
from discopop.config.compose import compose
from discopop.config.task import DIAGNOSTIC_KL_COEF
from discopop.contract.losses import load_loss
from discopop.fitness.diagnostic_tune import DiagnosticTuner, fine_tune
from discopop.tasks.diagnostic import KL_COEF, PRESETS, exact_scores, from_config, world

REPO = Path(__file__).resolve().parent.parent
DPO_SOURCE = (REPO / "discopop" / "proposals" / "dpo.py").read_text()

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one torch thread


@pytest.fixture(scope="module")
def dpo():
    return load_loss(DPO_SOURCE)  # a trusted reference file


def test_the_default_price_is_the_labels_objective_and_config_agrees() -> None:
    """beta 0.1 (the tier's training default) x the Bradley-Terry temperature 0.5 of the labels."""
    cfg, _ = compose(["task=diagnostic", "task.preset=deterministic"])
    assert KL_COEF == DIAGNOSTIC_KL_COEF == cfg["task"]["kl_coef"]
    assert KL_COEF == pytest.approx(cfg["training"]["beta"] * PRESETS["clean"].label_temperature)
    assert all(p.kl_coef == KL_COEF for p in PRESETS.values())  # one objective for every preset
    assert from_config(cfg["task"]).kl_coef == KL_COEF


def test_moving_further_along_dpos_own_direction_gains_reward_but_does_not_win(dpo) -> None:
    """DPO's trained policy (label_noise, its best rate 0.01) and the same direction taken further: reward alone
    (kl_coef 0, the old default) is highest further out than the priced fitness is, so the policy that gains reward
    by moving further from the reference loses under the default fitness to one nearer the reference.

    Measured on the confirming contexts (4,096 by default): reward peaks at x1.5, fitness at x1.25 (DPO's own point,
    x1, stops a little short). On the preset's first 256 contexts alone the same peaks hold, but x1.5 also scores
    below x1 there; across all of them it ties x1 (+0.0008), so the test compares the two optima, not x1.5 with x1."""
    cfg, _ = compose(["task=diagnostic", "task.preset=label_noise"])
    s = from_config(cfg["task"])
    w = world(s)
    coef = cfg["task"]["kl_coef"]
    scales = (1.0, 1.25, 1.5, 2.0)
    reward, fitness = dict.fromkeys(scales, 0.0), dict.fromkeys(scales, 0.0)
    seeds = (0, 1, 2)
    for seed in seeds:
        weights = fine_tune(dpo, s, seed=seed, lr=0.01).weights
        for scale in scales:
            r, kl = exact_scores(w.eval_features, w.eval_ref, w.eval_reward, scale * weights)
            reward[scale] += float(r.mean()) / len(seeds)
            fitness[scale] += float(r.mean() - coef * kl.mean()) / len(seeds)
    by_reward, by_fitness = max(scales, key=reward.get), max(scales, key=fitness.get)
    assert by_reward > by_fitness, f"reward peaks at x{by_reward}, fitness at x{by_fitness}"
    assert reward[by_reward] > reward[by_fitness] and fitness[by_reward] < fitness[by_fitness]


def test_the_tuners_reply_reports_reward_and_kl_apart_and_prices_kl_by_default(dpo) -> None:
    cfg, _ = compose(["task=diagnostic", "task.preset=label_noise", "task.contexts=64", "task.eval_contexts=64",
                      "task.steps=30", "task.batch=64", "task.extra_search_contexts=0"])
    tuner = DiagnosticTuner(task_settings(cfg["task"]), TrainingSettings(**cfg["training"]),
                            kl_coef=cfg["task"]["kl_coef"])
    reply = tuner.run(dpo, seed=0, learning_rate=0.03)
    assert reply["kl_coef"] == KL_COEF and reply["kl"] > 0.01
    assert reply["fitness"] == pytest.approx(reply["reward"] - KL_COEF * reply["kl"], abs=1e-12)
    assert len(reply["per_prompt"]) == len(reply["per_prompt_kl"]) == 32
    assert sum(reply["per_prompt"]) / 32 == pytest.approx(reply["reward"], abs=1e-9)
