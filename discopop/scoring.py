"""Held-out scoring of a tuned policy: reward, KL to the reference, and fitness.

* reward: mean task reward of *greedy* completions on the held-out prompts (greedy, because it
  is what a deployed model does and it is far less noisy than one sample per prompt);
* KL(policy || reference): Monte-Carlo estimate from one sampled completion per held-out prompt,
  the mean of log pi(y|x) - log pi_ref(y|x) over sequences (an unbiased estimator);
* fitness = reward - kl_coef * KL. ``kl_coef`` is per task: a reward that can be bought by
  drifting far from the reference needs it; an exactly verifiable reward does not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from discopop.tasks import Task
from discopop.tasks.synthetic import _decode_loop


@dataclass
class Score:
    fitness: float
    reward: float
    kl: float
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@torch.no_grad()
def _sequence_logps(model, prompt_ids: torch.Tensor, completion: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Summed log-probs of each completion (up to and including its first EOS)."""
    ids = torch.cat([prompt_ids, completion], dim=1)
    logits = model(input_ids=ids).logits[:, prompt_ids.shape[1] - 1:-1].float()
    logps = torch.log_softmax(logits, dim=-1).gather(2, completion.unsqueeze(2)).squeeze(2)
    is_eos = (completion == eos_id).int()
    before_first_eos = (torch.cumsum(is_eos, dim=1) - is_eos) == 0  # tokens up to and incl. first EOS
    return (logps * before_first_eos).sum(dim=1)


def _length_buckets(tokenizer, prompts: list[str], batch_size: int) -> list[tuple[list[str], torch.Tensor]]:
    """Batches of prompts with equal token length: no padding, so no attention-mask bookkeeping."""
    by_length: dict[int, list[tuple[str, list[int]]]] = {}
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        by_length.setdefault(len(ids), []).append((prompt, ids))
    batches = []
    for length in sorted(by_length):
        items = by_length[length]
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            batches.append(([p for p, _ in chunk], torch.tensor([ids for _, ids in chunk], dtype=torch.long)))
    return batches


@torch.no_grad()
def score_policy(policy, reference, tokenizer, task: Task, seed: int, kl_coef: float,
                 split: str = "search", batch_size: int = 512) -> Score:
    """Score ``policy`` on the task's held-out prompts (both models in eval mode, no grad)."""
    policy.eval()
    gen = torch.Generator().manual_seed(seed)
    eos_id = tokenizer.eos_token_id
    rewards, kls = [], []
    for chunk, ids in _length_buckets(tokenizer, task.prompts(split), batch_size):
        greedy = _decode_loop(policy, ids, task.max_new_tokens, eos_id, sample=False, gen=gen)
        for prompt, row in zip(chunk, greedy.tolist(), strict=True):
            if eos_id in row:
                text = tokenizer.decode(row[: row.index(eos_id)])
            else:  # unfinished: malformed for an exact-answer task, scored as is otherwise
                text = None if task.require_eos else tokenizer.decode(row)
            rewards.append(task.reward(prompt, text) if text is not None else 0.0)
        sampled = _decode_loop(policy, ids, task.max_new_tokens, eos_id, sample=True, gen=gen)
        diff = _sequence_logps(policy, ids, sampled, eos_id) - _sequence_logps(reference, ids, sampled, eos_id)
        kls.extend(diff.tolist())
    reward = sum(rewards) / len(rewards)
    kl = sum(kls) / len(kls)
    return Score(fitness=reward - kl_coef * kl, reward=reward, kl=kl)
