"""Held-out scoring of a tuned policy: reward, KL to the reference, and fitness.

* reward: mean task reward of *greedy* completions on the held-out prompts (greedy, because it
  is what a deployed model does and it is far less noisy than one sample per prompt);
* KL(policy || reference): Monte-Carlo estimate from one sampled completion per held-out prompt,
  the mean of log pi(y|x) - log pi_ref(y|x) over sequences (an unbiased estimator);
* fitness = reward - kl_coef * KL. ``kl_coef`` is per task: a reward that can be bought by
  drifting far from the reference needs it; an exactly verifiable reward does not.

A :class:`Score` also keeps the per-prompt reward and KL terms (in ``task.prompts(split)`` order):
two losses scored on the same prompts are compared prompt by prompt (``discopop.stats``), which
is far more precise than comparing two means, and tells prompt noise apart from seed noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from discopop.tasks import Task
from discopop.tasks.synthetic import decode_loop


@dataclass
class Score:
    fitness: float
    reward: float
    kl: float
    seconds: float = 0.0
    per_prompt: list[float] = field(default_factory=list)  # reward of each prompt, in task.prompts(split) order
    per_prompt_kl: list[float] = field(default_factory=list)  # KL estimate of each prompt, same order

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def per_prompt_fitness(rewards: list[float], kls: list[float], kl_coef: float) -> list[float]:
    """Each prompt's share of the fitness (their mean is the fitness): reward - kl_coef * KL."""
    if kl_coef == 0.0:
        return [float(r) for r in rewards]
    return [r - kl_coef * k for r, k in zip(rewards, kls, strict=True)]


@torch.no_grad()
def _sequence_logps(model, prompt_ids: torch.Tensor, completion: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Summed log-probs of each completion (up to and including its first EOS)."""
    ids = torch.cat([prompt_ids, completion], dim=1)
    logits = model(input_ids=ids).logits[:, prompt_ids.shape[1] - 1:-1].float()
    logps = torch.log_softmax(logits, dim=-1).gather(2, completion.unsqueeze(2)).squeeze(2)
    is_eos = (completion == eos_id).int()
    before_first_eos = (torch.cumsum(is_eos, dim=1) - is_eos) == 0  # tokens up to and incl. first EOS
    return (logps * before_first_eos).sum(dim=1)


def _length_buckets(tokenizer, prompts: list[str],
                    batch_size: int) -> list[tuple[list[int], list[str], torch.Tensor]]:
    """Batches of prompts with equal token length: no padding, so no attention-mask bookkeeping.

    Each batch carries the prompts' positions in ``prompts`` so per-prompt results keep that order.
    """
    by_length: dict[int, list[tuple[int, str, list[int]]]] = {}
    for index, prompt in enumerate(prompts):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        by_length.setdefault(len(ids), []).append((index, prompt, ids))
    batches = []
    for length in sorted(by_length):
        items = by_length[length]
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            batches.append(([i for i, _, _ in chunk], [p for _, p, _ in chunk],
                            torch.tensor([ids for _, _, ids in chunk], dtype=torch.long)))
    return batches


@torch.no_grad()
def score_policy(policy, reference, tokenizer, task: Task, seed: int, kl_coef: float,
                 split: str = "search", batch_size: int = 512) -> Score:
    """Score ``policy`` on the task's held-out prompts (both models in eval mode, no grad)."""
    policy.eval()
    gen = torch.Generator().manual_seed(seed)
    eos_id = tokenizer.eos_token_id
    prompts = task.prompts(split)
    rewards, kls = [0.0] * len(prompts), [0.0] * len(prompts)
    for positions, chunk, ids in _length_buckets(tokenizer, prompts, batch_size):
        greedy = decode_loop(policy, ids, task.max_new_tokens, eos_id, sample=False, gen=gen)
        for position, prompt, row in zip(positions, chunk, greedy.tolist(), strict=True):
            if eos_id in row:
                text = tokenizer.decode(row[: row.index(eos_id)])
            else:  # unfinished: malformed for an exact-answer task, scored as is otherwise
                text = None if task.require_eos else tokenizer.decode(row)
            rewards[position] = task.reward(prompt, text) if text is not None else 0.0
        sampled = decode_loop(policy, ids, task.max_new_tokens, eos_id, sample=True, gen=gen)
        diff = _sequence_logps(policy, ids, sampled, eos_id) - _sequence_logps(reference, ids, sampled, eos_id)
        for position, value in zip(positions, diff.tolist(), strict=True):
            kls[position] = value
    reward = sum(rewards) / len(rewards)
    kl = sum(kls) / len(kls)
    return Score(fitness=reward - kl_coef * kl, reward=reward, kl=kl, per_prompt=rewards, per_prompt_kl=kls)
