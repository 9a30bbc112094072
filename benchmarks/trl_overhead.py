"""Overhead of DiscoveredLossDPOTrainer(loss_fn=proposals/lrml.py) against TRL's own loss_type="discopop".

Both compute the same loss (tests/test_trl_adapter.py shows identical losses and parameters), so any
time difference is the adapter's cost: loading + static-checking the loss file, and the overridden
_compute_loss. The two variants run side by side in ONE process, interleaved (ABBA order so slow
drift of a shared machine hits both alike), on the same locally built model, data and steps.
Each run is timed twice: construction + train ("run"), and trainer.train() alone ("train").

    python benchmarks/trl_overhead.py --reps 7 --steps 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import GPT2LMHeadModel, PrinterCallback  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from discopop.dpo_trainer import DiscoveredLossDPOTrainer  # noqa: E402
from discopop.tasks.tiny import save_tiny, tiny_causal_lm  # noqa: E402

LRML = Path(__file__).resolve().parent.parent / "discopop" / "proposals" / "lrml.py"


def setup(root: Path, pairs: int):
    """The embedded addition task's model shape (3 layers, 128 wide), random weights, saved locally."""
    model, tok = tiny_causal_lm(width=128, layers=3, heads=4)
    save_tiny(root / "model", model, tok)
    rows = [{"prompt": f"{i % 100:02d}+{(7 * i) % 100:02d}=", "chosen": str(i % 100 + (7 * i) % 100),
             "rejected": str(i % 100 + (7 * i) % 100 + 10)} for i in range(pairs)]
    return tok, Dataset.from_list(rows)


def one_run(root: Path, tok, data: Dataset, ours: bool, steps: int, batch: int) -> tuple[float, float, float]:
    """(seconds for construction + train, seconds for train alone, final logged loss)."""
    model = GPT2LMHeadModel.from_pretrained(root / "model")
    args = DPOConfig(output_dir=str(root / "out"), per_device_train_batch_size=batch, max_steps=steps,
                     learning_rate=1e-5, logging_steps=steps, report_to=[], save_strategy="no", use_cpu=True,
                     seed=0, beta=0.1, loss_type="discopop", disable_tqdm=True, precompute_ref_log_probs=True)
    kwargs = {"model": model, "args": args, "train_dataset": data, "processing_class": tok}
    started = time.perf_counter()
    trainer = DiscoveredLossDPOTrainer(loss_fn=str(LRML), **kwargs) if ours else DPOTrainer(**kwargs)
    trainer.remove_callback(PrinterCallback)
    train_started = time.perf_counter()
    trainer.train()
    ended = time.perf_counter()
    loss = [h["loss"] for h in trainer.state.log_history if "loss" in h][-1]
    return ended - started, ended - train_started, loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    variants: dict[str, Callable[..., tuple[float, float, float]]] = {
        "TRL loss_type=discopop": lambda r, t, d: one_run(r, t, d, False, args.steps, args.batch),
        "DiscoveredLoss lrml.py": lambda r, t, d: one_run(r, t, d, True, args.steps, args.batch),
    }
    names = list(variants)
    runs: dict[str, list[float]] = {n: [] for n in names}
    trains: dict[str, list[float]] = {n: [] for n in names}
    losses: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tok, data = setup(root, args.steps * args.batch)
        for name in names:  # warm-up: first-call costs (imports, kernels, datasets cache) out of the numbers
            variants[name](root, tok, data)
        for rep in range(args.reps):
            for name in names if rep % 2 == 0 else names[::-1]:
                run_s, train_s, losses[name] = variants[name](root, tok, data)
                runs[name].append(run_s)
                trains[name].append(train_s)
    print(f"{args.reps} reps x {args.steps} steps, batch {args.batch}, GPT-2 3x128, torch threads {args.threads}, "
          f"CPU; medians")
    print(f"| {'variant':24} | {'s / run':>8} | {'s / train()':>11} | {'train() min-max':>15} | final loss")
    print(f"|{'-' * 26}|{'-' * 10}|{'-' * 13}|{'-' * 17}|-----------")
    for name in names:
        spread = f"{min(trains[name]):.3f}-{max(trains[name]):.3f}"
        print(f"| {name:24} | {statistics.median(runs[name]):8.3f} | {statistics.median(trains[name]):11.3f} "
              f"| {spread:>15} | {losses[name]:.6f}")
    base, ours = names
    print(f"ratio DiscoveredLoss / TRL: run {statistics.median(runs[ours]) / statistics.median(runs[base]):.3f}, "
          f"train() {statistics.median(trains[ours]) / statistics.median(trains[base]):.3f}")


if __name__ == "__main__":
    main()
