"""Train a tiny saved model a few steps with TRL's own loss options or with a loss through DiscoveredLossDPOTrainer,
and compare the parameters: the training-level parity harness (tests/test_trl_parity_more.py, test_trl_options.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import GPT2LMHeadModel, MixtralForCausalLM
from trl import DPOConfig, DPOTrainer

from discopop.dpo_trainer import DiscoveredLossDPOTrainer
from discopop.tasks.tiny import save_tiny, tiny_causal_lm

PROPOSALS = Path(__file__).resolve().parent.parent / "discopop" / "proposals"
STEPS = 4
# Two-digit sums whose "wrong" answer (sum + 1) is also two digits: every completion is 2 digits + EOS.
PAIRS = [(13, 7), (40, 41), (9, 9), (25, 30), (70, 11), (5, 60), (33, 33), (12, 20)]
L = 3


def build(tmp_path: Path, moe: bool = False):
    """A tiny model saved locally (GPT-2, or a 4-expert Mixtral), its tokenizer and equal-length pairs."""
    # router_aux_loss_coef raised from Mixtral's 0.001 so a dropped aux loss could not hide under 1e-5.
    model, tok = tiny_causal_lm(experts=4, router_aux_loss_coef=0.1) if moe else tiny_causal_lm()
    save_tiny(tmp_path / "model", model, tok)
    rows = [{"prompt": f"{a:02d}+{b:02d}=", "chosen": str(a + b), "rejected": str(a + b + 1)} for a, b in PAIRS]
    assert all(len(r["chosen"]) == len(r["rejected"]) == L - 1 for r in rows)
    return tok, Dataset.from_list(rows)


def train(tmp_path: Path, loss_file: str | Callable | None, moe: bool = False, **config: Any):
    """Train STEPS steps with TRL's loss (``loss_file=None``), a proposals/ file name or any ``loss_fn`` the trainer
    takes (source, callable); return the logged losses, the parameters and the logs."""
    tok, data = build(tmp_path, moe)
    model_cls = MixtralForCausalLM if moe else GPT2LMHeadModel
    model = model_cls.from_pretrained(tmp_path / "model")
    args = DPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=STEPS,
                     logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True,
                     bf16=False, **config)
    kwargs = {"model": model, "args": args, "train_dataset": data, "processing_class": tok}
    if loss_file is None:
        trainer = DPOTrainer(**kwargs)
    else:
        loss_fn = str(PROPOSALS / loss_file) if isinstance(loss_file, str) and loss_file.endswith(".py") else loss_file
        trainer = DiscoveredLossDPOTrainer(loss_fn=loss_fn, **kwargs)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return [h["loss"] for h in logs], {k: v.detach().clone() for k, v in model.state_dict().items()}, logs


def max_param_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


