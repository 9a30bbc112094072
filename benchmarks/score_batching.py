"""Held-out scoring time: length-sorted padded batches against the former exact-length buckets.

Real prompts (reviews, posts) rarely share a token length, so grouping them by exact length (the
former rule, which never padded) decoded most prompts alone. This builds a small GPT-2 with
random weights and a character tokenizer, ``--prompts`` prompts of varied lengths, and times
``scoring.score_policy`` (sorted, padded batches of ``--batch``) against the same decoding done
in exact-length groups, in one invocation, interleaved, reporting the median ratio. The greedy
completions of both are compared, so the speed is not bought with different answers.

    python benchmarks/score_batching.py --prompts 128 --batch 32 [--device cuda]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from discopop.fitness.scoring import score_policy
from discopop.tasks import Task
from discopop.tasks.synthetic import build_tokenizer, decode_loop

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,!?"


def exact_length_completions(model, tokenizer, prompts: list[str], max_new_tokens: int, batch: int) -> list[str]:
    """The former rule: one batch per exact prompt length (no padding), greedy and sampled decoding."""
    eos = tokenizer.eos_token_id
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(0)
    groups: dict[int, list[tuple[int, list[int]]]] = {}
    for i, prompt in enumerate(prompts):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        groups.setdefault(len(ids), []).append((i, ids))
    texts = [""] * len(prompts)
    with torch.no_grad():
        for length in sorted(groups):
            for start in range(0, len(groups[length]), batch):
                chunk = groups[length][start:start + batch]
                ids = torch.tensor([row for _, row in chunk], device=device)
                greedy = decode_loop(model, ids, max_new_tokens, eos, sample=False, gen=gen)
                decode_loop(model, ids, max_new_tokens, eos, sample=True, gen=gen)  # the KL sample, as scoring does
                for (i, _), row in zip(chunk, greedy.tolist(), strict=True):
                    texts[i] = tokenizer.decode(row[: row.index(eos)] if eos in row else row)
    return texts


def _synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = build_tokenizer(ALPHABET)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=128, n_layer=2, n_head=4,
                                       eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                                       pad_token_id=tokenizer.pad_token_id))
    model.to(args.device).eval()
    rng = random.Random(0)
    prompts = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(16, 96))) for _ in range(args.prompts)]
    task = Task(name="bench", model_path="", tokenizer_path="", pairs_path=Path(), heldout_prompts=prompts,
                confirm_prompts=prompts[:1], reward=None, max_new_tokens=args.new_tokens, require_eos=False,
                judged=True, score_batch_size=args.batch)
    lengths = {len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts}
    print(f"{len(prompts)} prompts, {len(lengths)} distinct token lengths, batch {args.batch}, "
          f"{args.new_tokens} new tokens, {args.threads} thread(s), {args.device}")
    padded_times, exact_times = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        score = score_policy(model, model, tokenizer, task, seed=0, kl_coef=0.0)
        _synchronise(args.device)
        padded_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        texts = exact_length_completions(model, tokenizer, prompts, args.new_tokens, args.batch)
        _synchronise(args.device)
        exact_times.append(time.perf_counter() - started)
    same = sum(a == b for a, b in zip(score.completions, texts, strict=True))
    padded, exact = statistics.median(padded_times), statistics.median(exact_times)
    print(f"exact-length buckets: {exact:.2f} s (median of {args.repeats}; decoding only, no KL log-probs)")
    print(f"sorted padded batches: {padded:.2f} s (median of {args.repeats}; decoding + KL log-probs)")
    print(f"speed-up: {exact / padded:.1f}x; identical greedy completions: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
