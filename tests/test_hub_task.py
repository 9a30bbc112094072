"""Hub tasks: the loading code runs on tiny models and a dataset built here and saved locally."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest
from datasets import Dataset

from discopop.losses import load_loss
from discopop.tasks import load_task
from discopop.tiny import save_tiny, tiny_causal_lm, tiny_reward_model
from discopop.training import FineTuner

REPO = Path(__file__).resolve().parent.parent
ALPHABET = "abcdefghijklmnopqrstuvwxyz .!?"


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory) -> Path:
    """A 'hub' on disk: policy, reward model and a preference dataset, all save_pretrained / save_to_disk."""
    root = tmp_path_factory.mktemp("hub")
    save_tiny(root / "policy", *tiny_causal_lm(ALPHABET, positions=64))
    save_tiny(root / "reward", *tiny_reward_model(ALPHABET, positions=64, seed=1))
    words = ["good", "great", "bad", "fine", "nice", "poor", "ok", "fun"]
    rows = [{"question": f"say {a} {b}", "better": f" {a}!", "worse": f" {b}."} for a in words for b in words if a != b]
    Dataset.from_list(rows).save_to_disk(str(root / "prefs"))
    return root


def hub_cfg(hub_dir: Path, cache: Path) -> dict:
    return {"name": "hub", "kind": "hub", "model": str(hub_dir / "policy"), "tokenizer": None,
            "dataset": str(hub_dir / "prefs"), "split": "train", "prompt_column": "question",
            "chosen_column": "better", "rejected_column": "worse", "heldout_prompts": 8, "max_pairs": 32,
            "reward_model": str(hub_dir / "reward"), "max_new_tokens": 6, "kl_coef": 0.05, "seed": 0,
            "cache_dir": str(cache)}


def test_hub_task_loads_splits_and_trains(hub_dir: Path, tmp_path: Path) -> None:
    task = load_task(hub_cfg(hub_dir, tmp_path))
    held = set(task.heldout_prompts + task.confirm_prompts)
    assert len(held) == 8
    pairs = json.loads((task.pairs_path.parent / "meta.json").read_text())
    assert pairs["pairs"] == 32
    from datasets import load_from_disk

    train_prompts = set(load_from_disk(str(task.pairs_path))["prompt"])
    assert not train_prompts & held, "held-out prompts leaked into training pairs"
    training = {"beta": 0.1, "learning_rate": 1e-3, "epochs": 1, "batch_size": 8, "threads": 1}
    tuner = FineTuner(task, training, Path(tempfile.mkdtemp()), kl_coef=0.05)
    result = tuner.run(load_loss(REPO / "proposals" / "dpo.py"), seed=0)
    assert result.steps == 4
    score = result.score
    assert all(map(lambda v: v == v and abs(v) < 1e6, (score.reward, score.kl, score.fitness)))
    assert score.fitness == pytest.approx(score.reward - 0.05 * score.kl)


def test_hub_task_reports_missing_columns(hub_dir: Path, tmp_path: Path) -> None:
    cfg = {**hub_cfg(hub_dir, tmp_path), "prompt_column": "prompt"}
    with pytest.raises(ValueError, match="lacks column"):
        load_task(cfg)


def test_discover_runs_on_a_hub_task(hub_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    overrides = [f"task.{k}={v}" for k, v in hub_cfg(hub_dir, tmp_path / "cache").items()
                 if k not in ("name", "kind", "tokenizer")]
    args = ["discover", "--generations", "1", "--quiet", "task=hub", *overrides, "baselines=[dpo]",
            "training.batch_size=8", "training.threads=1", "executor.workers=1", "confirm.seeds=0",
            "wandb.mode=disabled", f"hydra.run.dir={run_dir}"]
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "WANDB_MODE": "disabled"})
    assert out.returncode == 0, out.stderr[-2000:]
    with sqlite3.connect(run_dir / "archive.sqlite") as conn:
        statuses = dict(conn.execute("SELECT name, status FROM candidates").fetchall())
    assert statuses["dpo"] == "scored" and len(statuses) == 2


def test_hub_task_needs_its_paths(tmp_path: Path) -> None:
    out = subprocess.run(["discover", "--generations", "1", "task=hub"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "task=hub needs task.model, task.dataset, task.reward_model" in out.stderr
