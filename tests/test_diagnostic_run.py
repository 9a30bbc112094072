"""``task=diagnostic`` as a run's task: its settings, its Task, the worker's tuner and ``discover`` end to end."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import command_env

from discopop.config import ConfigError, RunSettings, TrainingSettings, task_settings
from discopop.config.compose import compose
from discopop.config.task import DIAGNOSTIC_PRESETS
from discopop.contract.losses import load_loss
from discopop.execution.messages import TrainReply
from discopop.fitness.diagnostic_tune import DiagnosticTuner, fine_tune
from discopop.fitness.tuning import split_fitness
from discopop.tasks import load_task
from discopop.tasks.diagnostic import PRESETS, from_config, split_contexts, world

REPO = Path(__file__).resolve().parent.parent
DPO_SOURCE = (REPO / "discopop" / "proposals" / "dpo.py").read_text()
SMALL = ["task.contexts=64", "task.eval_contexts=64", "task.steps=30", "task.batch=64",
         "task.extra_confirm_contexts=0", "task.extra_search_contexts=0"]  # eval_contexts split in halves


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one torch thread


@pytest.fixture(scope="module")
def dpo():
    return load_loss(DPO_SOURCE)  # a trusted reference file


def test_config_presets_match_the_task_family() -> None:
    assert DIAGNOSTIC_PRESETS == tuple(PRESETS)


def test_task_diagnostic_brings_its_own_training_settings() -> None:
    cfg, _ = compose(["task=diagnostic"])
    assert cfg["task"]["kind"] == "diagnostic" and cfg["task"]["preset"] == "clean"
    assert cfg["training"]["lr_grid"] == [0.003, 0.01, 0.03, 0.1, 0.3] and cfg["training"]["beta"] == 0.1
    back, _ = compose(["task=diagnostic", "training=short_dpo"])  # an explicit choice still wins
    assert back["training"]["lr_grid"] == compose([])[0]["training"]["lr_grid"]
    assert max(back["training"]["lr_grid"]) < 1e-3


def test_an_unknown_preset_is_refused() -> None:
    cfg, _ = compose(["task=diagnostic"])
    cfg["task"]["preset"] = "noisy"
    with pytest.raises(ConfigError, match="task.preset must be one of clean"):
        RunSettings.coerce(cfg).check()


def test_config_fields_override_the_preset() -> None:
    s = from_config({"preset": "label_noise", "contexts": 32, "steps": None, "kl_coef": 0.2})
    assert (s.name, s.contexts, s.label_noise, s.kl_coef) == ("label_noise", 32, 0.3, 0.2)
    assert s.steps == PRESETS["label_noise"].steps  # null: the preset's


def test_load_task_splits_the_heldout_contexts() -> None:
    cfg, _ = compose(["task=diagnostic", "task.eval_contexts=10", "task.extra_confirm_contexts=0",
                      "task.extra_search_contexts=0"])
    task = load_task(cfg["task"])
    assert task.prompts("search") == [f"context {i}" for i in range(5)]
    assert task.prompts("confirm") == [f"context {i}" for i in range(5, 10)]
    assert task.meta["pairs"] == 256 * 4 and 0 < task.meta["sft_heldout_reward"] < task.meta["best_reward"]


def test_tuner_reply_scores_the_split_it_is_asked(dpo) -> None:
    cfg, _ = compose(["task=diagnostic", *SMALL, "task.kl_coef=0.5"])
    tuner = DiagnosticTuner(task_settings(cfg["task"]), TrainingSettings(**cfg["training"]), kl_coef=0.5)
    search = tuner.run(dpo, seed=1, split="search", learning_rate=0.1)
    confirm = tuner.run(dpo, seed=1, split="confirm", learning_rate=0.1)
    full = fine_tune(dpo, tuner.setting, seed=1, lr=0.1, beta=0.1)
    part = split_contexts(tuner.setting, "confirm")
    assert confirm["per_prompt"] == full.per_context_reward[part] and len(confirm["per_prompt"]) == 32
    assert search["per_prompt"] != confirm["per_prompt"]
    for reply in (search, confirm):
        values = [r - 0.5 * k for r, k in zip(reply["per_prompt"], reply["per_prompt_kl"], strict=True)]
        assert reply["fitness"] == pytest.approx(sum(values) / len(values), abs=1e-5)
        tune, rank = split_fitness(TrainReply(**reply))  # as the worker sends it
        assert (tune + rank) / 2 == pytest.approx(reply["fitness"], abs=1e-5)
        assert reply["kl"] > 0 and reply["learning_rate"] == 0.1 and reply["steps"] == 30
        assert {"loss_start", "loss_end", "margin_abs_q50"} <= reply["train_metrics"].keys()
    w = world(tuner.setting)  # untrained, the greedy reward is that of the reference's mode on the split's contexts
    ref_mode = w.eval_reward.gather(1, w.eval_ref.argmax(dim=1, keepdim=True)).squeeze(1)[:32].mean()
    assert tuner.run(dpo, seed=1, learning_rate=1e-12)["greedy"] == pytest.approx(float(ref_mode), abs=1e-9)
    assert math.isfinite(search["greedy"]) and search["greedy"] != pytest.approx(float(ref_mode), abs=1e-3)
    for reply in (search, confirm):  # per context too, in per_prompt's order (benchmarks/task_calibration.py)
        assert len(reply["per_prompt_greedy"]) == len(reply["per_prompt"])
        assert sum(reply["per_prompt_greedy"]) / 32 == pytest.approx(reply["greedy"], abs=1e-9)


def test_tuner_leaves_the_global_rng_alone(dpo) -> None:
    """The worker snapshots its state after building the tuner: a fine-tune must not move torch's global state."""
    cfg, _ = compose(["task=diagnostic", *SMALL])
    tuner = DiagnosticTuner(task_settings(cfg["task"]), TrainingSettings(**cfg["training"]), kl_coef=0.0)
    before = torch.random.get_rng_state()
    manual_seed = torch.manual_seed
    tuner.run(dpo, seed=0)
    assert torch.equal(before, torch.random.get_rng_state()) and torch.manual_seed is manual_seed


@pytest.mark.slow  # ~40-90 s on 2 shared cores: oracle start-ups dominate; benchmarks/diagnostic_run.py runs it bigger
def test_discover_runs_on_the_diagnostic_tier(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ["discover", "--generations", "2", "--quiet", "task=diagnostic", *SMALL, "executor.workers=1",
            "baselines=[dpo,hinge]", "training.lr_grid=[0.03,0.1]", "confirm.seeds=2", "confirm.top_k=1",
            "selection.max_seeds=1", "wandb.mode=disabled",
            "confirm.transfer=[]",  # task=diagnostic now transfers to label_noise: test_transfer_confirm.py tests that
            f"hydra.run.dir={run_dir}"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=300, env=command_env(tmp_path / "cache"),
                         cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    with sqlite3.connect(run_dir / "archive.sqlite") as conn:
        rows = conn.execute("SELECT name, proposer, status, fitness, metrics FROM candidates ORDER BY id").fetchall()
        runs = conn.execute("SELECT split, per_prompt FROM evaluations WHERE error IS NULL").fetchall()
    refs = [r for r in rows if r[1] == "reference"]
    assert [r[0] for r in refs] == ["dpo", "hinge"] and all(r[2] == "scored" and math.isfinite(r[3]) for r in refs)
    scored = [r for r in rows if r[1] == "evolution" and r[2] == "scored"]
    assert scored and all(math.isfinite(r[3]) for r in scored)
    confirmed = [json.loads(r[4])["confirmation"] for r in scored if "confirmation" in json.loads(r[4])]
    assert confirmed and confirmed[0]["vs_dpo"]["prompts"] == 32 and confirmed[0]["vs_dpo"]["seeds"] == 2
    assert {split for split, _ in runs} == {"search", "confirm"}
    assert all(len(json.loads(p)) == 32 for _, p in runs)
