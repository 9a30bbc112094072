"""The untrained policy's fitness: what a loss's fine-tune tends to as its learning rate goes to zero.

A loss whose best rate is the grid's lowest may be one that only moves the policy away from what the fitness
rewards; its best fitness is then the reference policy's own (KL 0), approached from below as the rate shrinks.
This scores the reference policy (the task's SFT model, untrained) exactly as a fine-tuned policy is scored
(``fitness.scoring.score_policy``, policy = reference, so the sampled KL estimate is 0), on the search and the
confirm prompts. Trusted code only: no loss runs here.

    DISCOPOP_CACHE_DIR=<the task cache> python benchmarks/untrained_policy.py [hydra overrides]
"""

from __future__ import annotations

import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from discopop.config.compose import compose_settings
from discopop.fitness.scoring import score_policy
from discopop.tasks import load_task


def main(overrides: list[str]) -> None:
    cfg, _ = compose_settings(overrides)
    task = load_task(cfg.task)
    torch.set_num_threads(max(1, int(cfg.training.threads)))
    tokenizer = AutoTokenizer.from_pretrained(task.tokenizer_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(task.model_path, dtype=torch.float32).eval().requires_grad_(False)
    print(f"task {cfg.task.name}, kl_coef {cfg.task.kl_coef}: the untrained (reference) policy")
    for split in ("search", "confirm"):
        score = score_policy(model, model, tokenizer, task, seed=0, kl_coef=cfg.task.kl_coef, split=split)
        print(f"  {split}: {len(score.per_prompt)} prompts, fitness {score.fitness:.4f}, score {score.reward:.4f}, "
              f"KL {score.kl:.4f}, greedy {score.greedy if score.greedy is None else round(score.greedy, 4)}")


if __name__ == "__main__":
    main(sys.argv[1:])
