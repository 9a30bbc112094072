"""LoRA, mixed precision and gradient accumulation in the inner fine-tune, on CPU with the tiny task:
in process (weights inspected directly), through a real sandboxed worker, and end to end."""

from __future__ import annotations

import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import command_env
from test_hub_task import hub_cfg, hub_dir  # noqa: F401 - the module-scoped fixture is used below
from test_remote_loss import remote, supply  # noqa: F401 - the module-scoped fixture is used below

from discopop.config import TrainingSettings, task_settings
from discopop.contract.losses import load_loss
from discopop.execution.executors import Job, LocalExecutor, WorkerSpec
from discopop.fitness.training import AdapterDisabled, FineTuner

REPO = Path(__file__).resolve().parent.parent
PROPOSALS = REPO / "discopop" / "proposals"
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["c_attn", "c_fc"]}


def same_score(a, b) -> bool:
    return (a.fitness, a.reward, a.kl, a.per_prompt, a.per_prompt_kl) == (b.fitness, b.reward, b.kl, b.per_prompt,
                                                                          b.per_prompt_kl)


def training_of(cfg: dict, **extra) -> TrainingSettings:
    return TrainingSettings(**{**cfg["training"], "batch_size": 4, "learning_rate": 1e-2, "threads": 1, "epochs": 1,
                               **extra})


@pytest.fixture(scope="module")
def lora_tuner(tiny_task) -> FineTuner:
    task, cfg = tiny_task
    return FineTuner(task, training_of(cfg, lora=LORA, precision="bf16"), Path(tempfile.mkdtemp()))


def test_lora_trains_the_adapter_only_and_restores_it(lora_tuner: FineTuner) -> None:
    tuner = lora_tuner
    assert tuner.device == "cpu" and tuner.precision == "bf16"
    assert isinstance(tuner.reference, AdapterDisabled)
    frozen = {n: p.detach().clone() for n, p in tuner.model.named_parameters() if not p.requires_grad}
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen.values())  # frozen base in the training precision
    assert all("lora_" in name for name in tuner.initial_state)
    dpo, hinge = load_loss(PROPOSALS / "dpo.py"), load_loss(PROPOSALS / "hinge.py")
    first = tuner.run(dpo, seed=0)
    adapter = {n: p.detach().clone() for n, p in tuner.model.named_parameters() if p.requires_grad}
    moved = max(float((adapter[n] - tuner.initial_state[n]).abs().max()) for n in adapter)
    assert first.steps > 0 and moved > 1e-4, "the adapter did not train"
    tuner.run(hinge, seed=0)
    again = tuner.run(dpo, seed=0)
    assert again.final_loss == first.final_loss and same_score(again.score, first.score)
    assert all(torch.equal(p, frozen[n]) for n, p in tuner.model.named_parameters() if n in frozen)
    for value in (first.score.fitness, first.score.reward, first.score.kl, first.final_loss):
        assert value == value and abs(value) < 1e6


def test_the_lora_reference_is_the_base_model(lora_tuner: FineTuner, tiny_task) -> None:
    """Adapters disabled give the untouched base model's outputs (no second copy is kept)."""
    from transformers import AutoModelForCausalLM

    task, _ = tiny_task
    lora_tuner.run(load_loss(PROPOSALS / "dpo.py"), seed=0)  # a trained adapter: policy != reference
    base = AutoModelForCausalLM.from_pretrained(task.model_path, dtype=torch.bfloat16).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    lora_tuner.model.eval()
    with torch.no_grad():
        reference = lora_tuner.reference(input_ids=ids).logits
        policy = lora_tuner.model(input_ids=ids).logits
        assert torch.equal(reference, base(input_ids=ids).logits)
    assert not torch.equal(policy, reference)


def test_full_fine_tune_in_bf16_with_accumulation_and_checkpointing(tiny_task) -> None:
    task, cfg = tiny_task
    training = training_of(cfg, precision="bf16", gradient_accumulation_steps=2, gradient_checkpointing=True)
    tuner = FineTuner(task, training, Path(tempfile.mkdtemp()))
    assert tuner.trainer.args.bf16 and tuner.trainer.args.gradient_accumulation_steps == 2
    assert tuner.trainer.args.per_device_train_batch_size == 2  # batch_size pairs per step, in 2 micro-batches
    dpo = load_loss(PROPOSALS / "dpo.py")
    first = tuner.run(dpo, seed=1)
    start = {k: v.clone() for k, v in tuner.initial_state.items()}
    second = tuner.run(dpo, seed=1)
    assert first.final_loss == second.final_loss and same_score(first.score, second.score)
    assert first.final_loss == first.final_loss and first.peak_gpu_mb is None
    assert all(torch.equal(start[k], v) for k, v in tuner.initial_state.items()), "the starting point was trained"


def test_remote_loss_keeps_bf16_gradients(supply) -> None:  # noqa: F811
    """bf16 log-probs cross the wire and their gradients come back in bf16 on the caller's device."""
    source = (PROPOSALS / "dpo.py").read_text()
    torch.manual_seed(0)
    inputs = [(-torch.rand(6) * 5).to(torch.bfloat16).requires_grad_(i < 2) for i in range(4)]
    local = load_loss(source)(*inputs, 0.5)
    local.sum().backward()
    expected = [t.grad.clone() if t.grad is not None else None for t in inputs]
    for t in inputs:
        t.grad = None
    with remote(supply, source) as fn:
        far = fn(*inputs, 0.5)
        far.sum().backward()
    assert far.dtype == local.dtype == torch.bfloat16 and far.device == inputs[0].device
    assert torch.equal(far.detach(), local.detach())
    for t, want in zip(inputs, expected, strict=True):
        if want is None:
            assert t.grad is None
        else:
            assert t.grad.dtype == torch.bfloat16 and t.grad.device == t.device and torch.equal(t.grad, want)


@pytest.mark.slow
def test_lora_through_the_real_worker(tiny_task) -> None:
    """The sandboxed worker trains an adapter: finite fitness, and the same candidate gives the same result
    after another one ran (its starting point was restored, the base weights untouched). Slow: ~30 s, most
    of it the worker's start; the in-process tests above cover the same logic by default."""
    task, cfg = tiny_task
    spec = WorkerSpec(task=task_settings(cfg["task"]), training=training_of(cfg, lora=LORA, precision="bf16"),
                      threads=1)
    executor = LocalExecutor(spec, workers=1)
    try:
        dpo, hinge = (PROPOSALS / "dpo.py").read_text(), (PROPOSALS / "hinge.py").read_text()
        results = [next(executor.run([Job(i, code, "train", seed=0, learning_rate=1e-2)]))
                   for i, code in enumerate((dpo, hinge, dpo))]
        assert all(r.ok for r in results), [r.error for r in results]
        first, _, again = (r.trained for r in results)
        assert first.fitness == first.fitness and first.steps > 0 and first.peak_gpu_mb is None
        assert (again.fitness, again.final_loss) == (first.fitness, first.final_loss)
        (report,) = executor.sandbox_report()
        assert (report["device"], report["precision"], report["lora"]) == ("cpu", "bf16", True)
        assert "rlimit-as" in report["layers"] and "rlimit-as" not in report["missing_layers"]
    finally:
        executor.close()


@pytest.mark.slow
def test_discover_with_lora_on_a_hub_task(hub_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    run_dir = tmp_path / "run"
    overrides = [f"task.{k}={v}" for k, v in hub_cfg(hub_dir, tmp_path / "cache").items()
                 if k not in ("name", "kind", "tokenizer")]
    args = ["discover", "--generations", "2", "--quiet", "task=hub", *overrides, "baselines=[dpo]",
            "training.lora={r: 4, alpha: 8, target_modules: [c_attn]}", "training.precision=bf16",
            "training.batch_size=8", "training.gradient_accumulation_steps=2", "training.threads=1",
            "training.lr_grid=[1e-3]", "confirm.seeds=0", "wandb.mode=disabled", f"hydra.run.dir={run_dir}"]
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600, env=command_env())
    assert out.returncode == 0, out.stderr[-2000:]
    with sqlite3.connect(run_dir / "archive.sqlite") as conn:
        rows = conn.execute("SELECT name, status, fitness, generation FROM candidates").fetchall()
    assert {r[3] for r in rows} == {0, 1, 2}
    assert all(r[1] != "proposed" for r in rows)
    scored = [r for r in rows if r[1] == "scored"]
    assert any(r[0] == "dpo" for r in scored) and all(r[2] == r[2] for r in scored)
