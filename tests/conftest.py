"""Shared fixtures: a tiny embedded task built locally (cached per session) and a small run config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent

# A deliberately tiny task: builds in a few seconds, enough pairs for a handful of DPO steps.
TINY_TASK = [
    "task.sft.steps=150", "task.sft.n_layer=1", "task.sft.n_embd=32", "task.sft.n_head=2",
    "task.pairs.prompts=200", "task.pairs.samples_per_prompt=16", "task.pairs.max_pairs=64",
    "task.heldout_prompts=64", "task.search_prompts=32",
]
SMALL_RUN = [
    # Two workers whatever the machine (the default, auto, would start one per core): so two proposals a generation.
    *TINY_TASK, "training.batch_size=16", "training.threads=1", "executor.workers=2", "training.epochs=1",
    "baselines=[dpo,lrml]",
    "training.lr_grid=[5e-6,2e-5]",
    "confirm.seeds=2", "confirm.top_k=1", "wandb.mode=disabled",
    "selection.max_seeds=1",  # no seed race here (its cost): tests/test_seed_race.py runs it
]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("discopop-cache")
    os.environ["DISCOPOP_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_task(cache_dir):
    """The tiny task, built once per test session into a temporary cache."""
    from discopop.config.compose import compose
    from discopop.tasks import load_task

    cfg, _ = compose(TINY_TASK)
    return load_task(cfg["task"]), cfg


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: torch's thread pool only adds contention (workers and benchmarks run with one thread too)."""
    import torch  # lazy: most test modules never need torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
