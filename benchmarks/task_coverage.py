"""What an embedded task's reference policy and pairs cover: the small-sum floor and the answer lengths.

For a built task (built first on a miss, into ``$DISCOPOP_CACHE_DIR``): the SFT reference policy's greedy
accuracy and mean teacher-forced probability of the right answer on the held-out prompts, by region (sums
under 20 against the rest, carry or not); how many preference pairs fall in each region; and the spread of
the answer lengths in tokens (chosen and rejected, EOS included): the quantity a mixed-length task varies so
that beta * rho differs from pair to pair (issue 24 item 5).

    DISCOPOP_CACHE_DIR=/tmp/cov python benchmarks/task_coverage.py                             # default task
    DISCOPOP_CACHE_DIR=/tmp/cov python benchmarks/task_coverage.py task.sft.small_sum_share=0.1  # with coverage
    python benchmarks/task_coverage.py task=addition_mixedlen task.sft.steps=150 ...              # (tiny build)

Build the default task in a cache of its own: its SFT takes ~10-35 min on 2 loaded cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from datasets import load_from_disk
from transformers import AutoModelForCausalLM, AutoTokenizer

from discopop.config.compose import compose
from discopop.fitness.likelihood import answer_probabilities
from discopop.tasks import load_task
from discopop.tasks.pair_variants import is_hard
from discopop.tasks.synthetic import LANGUAGES, encode, generate


def region(language, prompt: str) -> str:
    """'small' (sum under 20) or 'rest', with '+carry' where the reference has its habitual mistake."""
    place = "small" if language.small_sum(prompt) else "rest"
    return place + ("+carry" if is_hard(language, prompt) else "")


def quantiles(values: list[int]) -> str:
    cut = statistics.quantiles(values, n=10, method="inclusive")
    return f"{cut[0]:g}/{statistics.median(values):g}/{cut[-1]:g}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg, _ = compose(["wandb.mode=disabled", *args.overrides])
    started = time.perf_counter()
    task = load_task(cfg["task"], log=print)
    language = LANGUAGES[cfg["task"]["language"]]()
    tokenizer = AutoTokenizer.from_pretrained(task.tokenizer_path)
    model = AutoModelForCausalLM.from_pretrained(task.model_path).eval()
    held = [*task.heldout_prompts, *task.confirm_prompts, *task.replicate_prompts]
    greedy = generate(model, tokenizer, held, task.max_new_tokens, sample=False)
    answers = [tokenizer(language.answer(p), add_special_tokens=False)["input_ids"] for p in held]
    with torch.no_grad():
        prob = answer_probabilities(model, encode(tokenizer, held), answers, tokenizer.eos_token_id).tolist()
    pairs = load_from_disk(str(task.pairs_path))
    figures: dict = {"task": task.name, "meta": task.meta, "held_out": {}, "pairs": {}}
    print(f"task {task.name} ({time.perf_counter() - started:.0f} s to load/build): {task.meta}")
    print(f"{'region':12s} {'held-out':>8s} {'greedy right':>12s} {'mean P(right)':>13s} {'pairs':>6s}")
    names = sorted({region(language, p) for p in held} | {region(language, p) for p in pairs["prompt"]})
    for name in [*names, "small (all)"]:
        inside = [i for i, p in enumerate(held) if region(language, p) == name or
                  (name == "small (all)" and language.small_sum(p))]
        n_pairs = sum(1 for p in pairs["prompt"] if region(language, p) == name or
                      (name == "small (all)" and language.small_sum(p)))
        right = sum(greedy[i] == language.answer(held[i]) for i in inside) / len(inside) if inside else float("nan")
        mean_p = sum(prob[i] for i in inside) / len(inside) if inside else float("nan")
        figures["held_out"][name] = {"n": len(inside), "greedy": round(right, 4), "probability": round(mean_p, 4)}
        figures["pairs"][name] = n_pairs
        print(f"{name:12s} {len(inside):8d} {right:12.3f} {mean_p:13.3f} {n_pairs:6d}")
    lengths = {side: [len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in pairs[side]]
               for side in ("chosen", "rejected")}
    for side, values in lengths.items():
        figures[f"{side}_tokens_q10_50_90"] = quantiles(values)
        print(f"{side} answer tokens (EOS included) q10/median/q90: {quantiles(values)}, range "
              f"{min(values)}-{max(values)}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    main()
