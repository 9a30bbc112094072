"""A cheap proxy for rebuilding the default task with ``task.sft.small_sum_share``: continue the stored default
reference's SFT for a few hundred steps, with the default data mix (control) and with small sums over-sampled
(treatment), same seed and steps, and compare both on the held-out sums under 20 (greedy right, mean P(right)).

It answers "can this reference learn small sums from more coverage?" in minutes where a rebuild takes 10-35 min
on 2 loaded cores; it is not the rebuilt task (the rebuilt reference is trained from scratch on the new mix).

    python benchmarks/sft_coverage_proxy.py --task-dir ~/.cache/discopop/addition-64a222bdd173 --steps 300 \
        --shares 0 0.1
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
from transformers import GPT2LMHeadModel

from discopop.fitness.likelihood import answer_probabilities
from discopop.tasks import synthetic


def small_sum_figures(model, tokenizer, language, prompts: list[str]) -> tuple[float, float]:
    """(greedy right, mean teacher-forced P(right)) of ``model`` on ``prompts``."""
    greedy = synthetic.generate(model, tokenizer, prompts, language.max_answer_len + 1, sample=False)
    answers = [tokenizer(language.answer(p), add_special_tokens=False)["input_ids"] for p in prompts]
    prob = answer_probabilities(model, synthetic.encode(tokenizer, prompts), answers, tokenizer.eos_token_id)
    right = sum(g == language.answer(p) for g, p in zip(greedy, prompts, strict=True)) / len(prompts)
    return right, float(prob.mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task-dir", type=Path, required=True, help="a built default addition task (read only)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--small-only", action="store_true", help="score only the small sums (skips ~3,000 prompts)")
    parser.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.1], help="0: the default data mix")
    args = parser.parse_args()
    torch.set_num_threads(1)
    language = synthetic.Addition()
    tokenizer = synthetic.build_tokenizer(language.alphabet)
    held = json.loads((args.task_dir / "heldout.json").read_text())
    small = [p for p in held if language.small_sum(p)]
    _, train = synthetic.split_heldout(language, language.problems(random.Random(0)), 3000)
    assert not set(held) & {p for p, _ in train}  # the split this task was built with
    sft = {"batch_size": 64, "noise": 0.1, "systematic_error": 0.6}
    model = GPT2LMHeadModel.from_pretrained(args.task_dir / "sft_model").eval()
    right, prob = small_sum_figures(model, tokenizer, language, small)
    print(f"reference: {len(small)} held-out small sums, greedy right {right:.3f}, mean P(right) {prob:.3f}",
          flush=True)
    for share in args.shares:
        torch.manual_seed(0)
        model = GPT2LMHeadModel.from_pretrained(args.task_dir / "sft_model").train()
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
        batches = synthetic._sft_batches(language, train, tokenizer, {**sft, "small_sum_share": share},
                                         random.Random(0))
        for _ in range(args.steps):
            ids, labels = next(batches)
            loss = model(input_ids=ids, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        model.eval()
        right, prob = small_sum_figures(model, tokenizer, language, small)
        rest = "" if args.small_only else "; other held-out prompts {:.3f} / {:.3f}".format(
            *small_sum_figures(model, tokenizer, language, [p for p in held if p not in small]))
        print(f"+{args.steps} SFT steps, small_sum_share {share}: small sums greedy right {right:.3f}, mean P(right) "
              f"{prob:.3f}{rest}", flush=True)


if __name__ == "__main__":
    main()
