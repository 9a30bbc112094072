"""benchmarks/gpu_candidate.py's 0.5B size (Qwen2.5-0.5B's shape, random weights) and benchmarks/one_gpu_hour.py, on
a CPU at ``0.5b-tiny``: the same architecture, a few thousand parameters wide. What the GPU run needs and a CPU can
show: the shape's parameter count, the hub path loading it, a LoRA on all its linear layers with gradient
checkpointing, batched reward scoring, and both scripts' reports."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import benchmark_script

from discopop.config import TrainingSettings
from discopop.config.compose import compose
from discopop.contract.losses import load_loss
from discopop.fitness.training import FineTuner
from discopop.tasks import load_task
from discopop.tasks.hub import RewardModelScorer

REPO = Path(__file__).resolve().parent.parent
gpu = benchmark_script("gpu_candidate")
hour = benchmark_script("one_gpu_hour")
QWEN2_LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.fixture(scope="module")
def qwen_hub(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("qwen-hub")
    gpu.build_hub(root, gpu.SIZES["0.5b-tiny"], pairs=32, heldout=8, seed=0)
    return root


def linear_names(model: torch.nn.Module) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def test_the_05b_size_is_qwen25_05b_and_the_tiny_one_the_same_architecture() -> None:
    big, tiny = gpu.SIZES["0.5b"], gpu.SIZES["0.5b-tiny"]
    assert 490e6 < gpu.n_parameters(big) < 500e6  # Qwen2.5-0.5B: 494M, the embedding tied to the output layer
    assert gpu.n_parameters(tiny) < 1e6
    with torch.device("meta"):
        a, b = gpu.random_model(big), gpu.random_model(tiny)
    assert type(a) is type(b) and a.config.model_type == "qwen2"
    assert a.config.tie_word_embeddings and b.config.tie_word_embeddings
    assert a.config.num_key_value_heads < a.config.num_attention_heads  # grouped-query attention, both sizes
    assert b.config.num_key_value_heads < b.config.num_attention_heads
    assert linear_names(a) == linear_names(b) == QWEN2_LINEAR | {"lm_head"}


def test_the_tiny_qwen2_loads_through_the_hub_path_and_trains_a_lora_with_checkpointing(qwen_hub: Path) -> None:
    from transformers import AutoModelForCausalLM

    cfg, _ = compose(gpu.hub_overrides(qwen_hub, gpu.SIZES["0.5b-tiny"], heldout=8))
    task = load_task(cfg["task"])
    assert type(AutoModelForCausalLM.from_pretrained(task.model_path)).__name__ == "Qwen2ForCausalLM"
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
    training = TrainingSettings(beta=0.1, learning_rate=1e-2, epochs=1, batch_size=8, threads=1, lora=lora,
                                precision="bf16", gradient_checkpointing=True)
    tuner = FineTuner(task, training, Path(tempfile.mkdtemp()), kl_coef=0.05)
    assert tuner.trainer.args.gradient_checkpointing
    adapted = {re.sub(r"\.lora_[AB]\..*", "", n).rsplit(".", 1)[-1] for n, _ in tuner.model.named_parameters()
               if ".lora_" in n}
    assert adapted == QWEN2_LINEAR  # all-linear: every linear layer of every block, not the tied output layer
    result = tuner.run(load_loss(REPO / "proposals" / "dpo.py"), seed=0)
    moved = [float((p.detach() - tuner.initial_state[n]).abs().max())
             for n, p in tuner.model.named_parameters() if ".lora_B." in n]  # B starts at zero
    assert result.steps == 4 and min(moved) > 1e-5, "an adapter did not train"  # gradients crossed the checkpoints
    assert tuner.model.base_model.model.is_gradient_checkpointing  # the trainer turns it on when training starts
    assert all(v == v and abs(v) < 1e6 for v in (result.score.fitness, result.score.reward, result.score.kl))


def test_the_reward_model_scores_in_batches_as_it_scores_one_at_a_time(qwen_hub: Path) -> None:
    """Padded batches (sorted by length) give each text the reward it gets alone, in the order asked."""
    scorer = RewardModelScorer(str(qwen_hub / "reward"))
    prompts = ["hello there", "a", "what is this?", "ok", "the longest prompt of them all, by far", "b c"]
    completions = [" fine.", " yes", None, " no no no no no", " x", " maybe, maybe not"]
    batched = scorer.batch(prompts, completions, batch_size=3)
    alone = [scorer(p, c) if c is not None else 0.0 for p, c in zip(prompts, completions, strict=True)]
    assert batched == pytest.approx(alone, abs=1e-4)
    assert batched[2] == 0.0 and len({round(v, 4) for v in batched}) == len(batched)


def test_worker_peak_rss_reads_each_local_worker_process() -> None:
    me = SimpleNamespace(proc=SimpleNamespace(proc=SimpleNamespace(pid=os.getpid())))
    gone = SimpleNamespace(proc=SimpleNamespace(proc=SimpleNamespace(pid=2**22 + 7)))  # above Linux's pid_max
    unstarted = SimpleNamespace(proc=None)
    (peak,) = gpu.worker_peak_rss_mb(SimpleNamespace(workers=[me, gone, unstarted]))
    assert 50 < peak < 64 * 1024  # this test process: torch and transformers are loaded
    assert gpu.worker_peak_rss_mb(SimpleNamespace()) == []  # Ray: no local worker processes


def test_one_gpu_hour_changes_only_the_task_precision_adapter_and_limits(tmp_path: Path) -> None:
    size = gpu.SIZES["0.5b"]
    on_gpu = hour.run_overrides(tmp_path, size, 32, "cuda", lora=True, checkpointing=False)
    on_cpu = hour.run_overrides(tmp_path, size, 32, "cpu", lora=False, checkpointing=True)
    assert {o.split("=")[0] for o in on_gpu} == {"task", "task.model", "task.dataset", "task.reward_model",
                                                  "task.heldout_prompts", "task.max_new_tokens", "task.cache_dir",
                                                  "executor.memory_mb", "training.device", "training.precision",
                                                  "training.lora", "training.train_timeout", "training.check_timeout"}
    assert "training.precision=bf16" in on_gpu and not any(o.startswith("training.precision") for o in on_cpu)
    assert "training.gradient_checkpointing=true" in on_cpu and not any("lora" in o for o in on_cpu)
    cfg, _ = compose(on_gpu)
    assert cfg["training"]["lora"]["target_modules"] == "all-linear" and cfg["executor"]["memory_mb"] == 16384


def test_the_split_adds_up_to_the_wall_time() -> None:
    out = {"wall": 100.0, "parallelism": 2, "phases": {"references": 20.0, "generations": 50.0, "pick": None,
                                                       "confirmation": 10.0, "transfer": None},
           "jobs": {"check": 9, "train": 30, "short": 4, "confirm": 6}, "job_seconds": 150.0,
           "idle_worker_seconds": 50.0, "candidates": 8, "statuses": {"scored": 7, "invalid": 1},
           "evolved_fine_tunes": 21}
    lines = hour.split_lines(out)
    shares = [float(m.group(1)) for line in lines if (m := re.search(r" (\d+\.\d)%$", line))]
    assert shares == [20.0, 50.0, 0.0, 10.0, 0.0, 20.0] and sum(shares) == pytest.approx(100.0)
    assert "fine-tunes 40 (" in lines[-2] and "their fine-tunes 21" in lines[-1]


@pytest.mark.slow  # ~45-120 s on 2 shared cores (three worker starts); python benchmarks/gpu_candidate.py runs it big
def test_the_benchmark_reports_time_and_peak_memory_with_one_and_two_workers(qwen_hub: Path) -> None:
    common = [*gpu.hub_overrides(qwen_hub, gpu.SIZES["0.5b-tiny"], heldout=8), "training.epochs=1",
              "training.lr_grid=[1e-3]", "training.batch_size=8", "training.threads=1", "training.device=cpu",
              "confirm.seeds=0", "wandb.mode=disabled", f"training.lora={gpu.LORA}",
              "training.gradient_checkpointing=true"]
    for workers in (1, 2):
        m = gpu.measure(f"lora, {workers}", [*common, f"executor.workers={workers}"], n=2)
        assert not m.failed and len(m.total) == 2 and all(t > 0 for t in m.total)
        assert len(m.peak_rss_mb) == 2 and min(m.peak_rss_mb) > 100  # each worker after each batch (2 candidates)
        assert m.peak_gpu_mb == [] and f"{max(m.peak_rss_mb):8.0f}" in gpu.summary(m, None)


@pytest.mark.slow  # ~25-100 s on 2 shared cores (a worker start, the references); the CPU command in benchmarks/README
def test_one_gpu_hour_runs_a_discovery_and_reports_its_split(tmp_path: Path) -> None:
    out = hour.main(["--size", "0.5b-tiny", "--generations", "1", "--pairs", "32", "--heldout", "8",
                     "--root", str(tmp_path), "--out", str(tmp_path / "summary.json"), "baselines=[dpo]",
                     "training.lr_grid=[1e-3]", "training.batch_size=8", "training.epochs=1", "confirm.seeds=1",
                     "confirm.top_k=1", "selection.max_seeds=1", "executor.workers=1"])
    assert (tmp_path / "summary.json").exists() and (tmp_path / "run" / "archive.sqlite").exists()
    assert out["phases"]["references"] > 0 and out["phases"]["generations"] > 0 and out["phases"]["confirmation"] > 0
    assert out["candidates"] >= 1 and out["jobs"]["train"] >= 2 and out["jobs"]["confirm"] >= 2
    assert out["wall"] >= sum(v or 0.0 for v in out["phases"].values())
