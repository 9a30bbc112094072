"""Parity of DiscoveredLossDPOTrainer + a proposals/ file with TRL's own DPOTrainer + loss_type.

For each pair, trains the same tiny model (built locally, same seed, data and steps) twice, once with
TRL's built-in loss and once with the contract loss, and prints the max |Δ loss| over the logged steps
and the max |Δ param| after the last step. Rows marked "normalised" compare TRL's per-token-normalised
losses with ours on data whose completions all have L tokens: there TRL's loss at beta equals ours at
beta/L (times L**2 for IPO, compensated by SGD at lr/L**2, no clipping). The "differs" row shows the
gap when that normalisation is ignored, i.e. why ipo.py is not TRL's ipo.

    python benchmarks/trl_parity.py --steps 8 [--bf16]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from transformers import GPT2LMHeadModel, MixtralForCausalLM, PrinterCallback  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from discopop.dpo_trainer import DiscoveredLossDPOTrainer  # noqa: E402
from discopop.tasks.tiny import save_tiny, tiny_causal_lm  # noqa: E402

PROPOSALS = Path(__file__).resolve().parent.parent / "discopop" / "proposals"
L = 3  # every completion below is two digits + EOS
PAIRS = [(a, b) for a in (13, 40, 9, 25, 70, 5, 33, 12) for b in (7, 20)]


@dataclass
class Case:
    label: str
    loss_type: str
    loss_file: str
    trl: dict[str, Any] = field(default_factory=dict)  # DPOConfig fields for TRL's run
    ours: dict[str, Any] = field(default_factory=dict)  # DPOConfig fields for ours (default: same as TRL's)
    loss_scale: float = 1.0  # ours = loss_scale * TRL's
    moe: bool = False
    lora: bool = False
    note: str = "exact"


BASE = {"beta": 0.1, "learning_rate": 1e-3}
SGD = {"optim": "sgd", "max_grad_norm": 0.0}
CASES = [
    Case("sigmoid", "sigmoid", "dpo.py", BASE),
    Case("hinge", "hinge", "hinge.py", BASE),
    Case("discopop", "discopop", "lrml.py", BASE),
    Case("robust (label_smoothing=0)", "robust", "dpo.py", {**BASE, "label_smoothing": 0.0}, dict(BASE)),
    Case("sigmoid_norm", "sigmoid_norm", "dpo.py", {"beta": 0.3, "learning_rate": 1e-3},
         {"beta": 0.3 / L, "learning_rate": 1e-3}, note="normalised: ours at beta/L"),
    Case("ipo", "ipo", "ipo.py", {"beta": 0.5, "learning_rate": 1e-2, **SGD},
         {"beta": 0.5 / L, "learning_rate": 1e-2 / L**2, **SGD}, loss_scale=L**2,
         note="normalised: ours at beta/L = L^2 x TRL"),
    Case("ipo, same beta", "ipo", "ipo.py", {"beta": 0.5, "learning_rate": 1e-2, **SGD},
         note="differs on purpose (TRL per-token)"),
    Case("sigmoid + MoE router aux", "sigmoid", "dpo.py", BASE, moe=True),
    Case("discopop + LoRA", "discopop", "lrml.py", {"beta": 0.1, "learning_rate": 1e-2}, lora=True),
    Case("discopop + LoRA, precompute", "discopop", "lrml.py",
         {"beta": 0.1, "learning_rate": 1e-2, "precompute_ref_log_probs": True}, lora=True),
]


def build(root: Path, moe: bool) -> tuple[Any, Dataset]:
    model, tok = tiny_causal_lm(experts=4, router_aux_loss_coef=0.1) if moe else tiny_causal_lm()
    save_tiny(root / "model", model, tok)
    rows = [{"prompt": f"{a:02d}+{b:02d}=", "chosen": str(a + b), "rejected": str(a + b + 1)} for a, b in PAIRS]
    return tok, Dataset.from_list(rows)


def train(root: Path, case: Case, ours: bool, steps: int, bf16: bool) -> tuple[list[float], dict[str, torch.Tensor]]:
    tok, data = build(root, case.moe)
    model = (MixtralForCausalLM if case.moe else GPT2LMHeadModel).from_pretrained(root / "model")
    fields = (case.ours or case.trl) if ours else case.trl
    args = DPOConfig(output_dir=str(root / "out"), per_device_train_batch_size=4, max_steps=steps, logging_steps=1,
                     report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True, bf16=bf16,
                     loss_type=case.loss_type, **fields)
    kwargs: dict[str, Any] = {"model": model, "args": args, "train_dataset": data, "processing_class": tok}
    if case.lora:
        kwargs["peft_config"] = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True,
                                           lora_dropout=0.0)
    trainer = (DiscoveredLossDPOTrainer(loss_fn=str(PROPOSALS / case.loss_file), **kwargs) if ours
               else DPOTrainer(**kwargs))
    trainer.remove_callback(PrinterCallback)  # keep stdout to the table
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return losses, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--bf16", action="store_true", help="TRL's default mixed precision (on CPU: bf16 autocast)")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)
    print(f"{args.steps} steps, batch 4, {'bf16 autocast' if args.bf16 else 'fp32'}")
    header = f"| {'TRL loss_type':30} | {'proposals file':14} | {'max |Δ loss|':>12} | {'max |Δ param|':>13} | note"
    print(header + "\n|" + "-" * 32 + "|" + "-" * 16 + "|" + "-" * 14 + "|" + "-" * 15 + "|------")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(CASES):
            trl_losses, trl_params = train(Path(tmp) / f"{i}-trl", case, False, args.steps, args.bf16)
            our_losses, our_params = train(Path(tmp) / f"{i}-ours", case, True, args.steps, args.bf16)
            d_loss = max(abs(o / case.loss_scale - t) for o, t in zip(our_losses, trl_losses, strict=True))
            d_param = max(float((trl_params[k] - our_params[k]).abs().max()) for k in trl_params)
            print(f"| {case.label:30} | {case.loss_file:14} | {d_loss:12.2e} | {d_param:13.2e} | {case.note}")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
