"""Held-out scoring of a tuned policy: reward, KL to the reference, and fitness.

* reward: mean task reward of *greedy* completions on the held-out prompts (greedy, because it
  is what a deployed model does and it is far less noisy than one sample per prompt);
* KL(policy || reference): Monte-Carlo estimate from one sampled completion per held-out prompt,
  the mean of log pi(y|x) - log pi_ref(y|x) over sequences (an unbiased estimator);
* fitness = reward - kl_coef * KL. ``kl_coef`` is per task: a reward that can be bought by
  drifting far from the reference needs it; an exactly verifiable reward does not.

A :class:`Score` also keeps the per-prompt reward and KL terms (in ``task.prompts(split)`` order):
two losses scored on the same prompts are compared prompt by prompt (``discopop.fitness.stats``), which
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
    completions: list[str] | None = None  # greedy completions, same order: only for a judged task

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def per_prompt_fitness(rewards: list[float], kls: list[float], kl_coef: float) -> list[float]:
    """Each prompt's share of the fitness (their mean is the fitness): reward - kl_coef * KL."""
    if kl_coef == 0.0:
        return [float(r) for r in rewards]
    return [r - kl_coef * k for r, k in zip(rewards, kls, strict=True)]


@torch.no_grad()
def _sequence_logps(model, prompt_ids: torch.Tensor, completion: torch.Tensor, eos_id: int,
                    prompt_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Summed log-probs of each completion (up to and including its first EOS); ``prompt_mask`` as in decoding."""
    ids = torch.cat([prompt_ids, completion], dim=1)
    if prompt_mask is None:
        out = model(input_ids=ids)
    else:
        mask = torch.cat([prompt_mask, prompt_mask.new_ones(completion.shape)], dim=1)
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.long().cumsum(1) - 1).clamp(min=0))
    logits = out.logits[:, prompt_ids.shape[1] - 1:-1].float()
    logps = torch.log_softmax(logits, dim=-1).gather(2, completion.unsqueeze(2)).squeeze(2)
    is_eos = (completion == eos_id).int()
    before_first_eos = (torch.cumsum(is_eos, dim=1) - is_eos) == 0  # tokens up to and incl. first EOS
    return (logps * before_first_eos).sum(dim=1)


@dataclass
class PromptBatch:
    """Prompts decoded together: their positions in the prompt list, token ids (left-padded) and mask.

    ``mask`` is None when every prompt has the same length: then nothing is padded and the model
    is called without one, exactly as for the fixed-width embedded tasks.
    """

    positions: list[int]
    prompts: list[str]
    ids: torch.Tensor
    mask: torch.Tensor | None


def length_batches(tokenizer, prompts: list[str], batch_size: int, device: torch.device | str = "cpu",
                   pad_id: int | None = None) -> list[PromptBatch]:
    """Prompts sorted by token length and cut into batches of ``batch_size``, so padding stays small.

    The sort is stable, so prompts of one length keep their order, and every batch remembers
    where its prompts came from: per-prompt results go back to ``prompts`` order.
    """
    encoded = [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    pad = pad_id if pad_id is not None else (tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                                             else tokenizer.eos_token_id)
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        rows = [[pad] * (width - len(encoded[i])) + encoded[i] for i in chunk]
        ids = torch.tensor(rows, dtype=torch.long, device=device)
        mask = None
        if any(len(encoded[i]) != width for i in chunk):
            mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in chunk],
                                dtype=torch.long, device=device)
        batches.append(PromptBatch(list(chunk), [prompts[i] for i in chunk], ids, mask))
    return batches


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def score_policy(policy, reference, tokenizer, task: Task, seed: int, kl_coef: float,
                 split: str = "search", batch_size: int | None = None) -> Score:
    """Score ``policy`` on the task's held-out prompts (both models in eval mode, no grad).

    Decoding and the reward model run on the policy's device. For a judged task (``task.judged``)
    the reward is left at 0 and the greedy completions are returned instead: the judge runs in the
    trusted main process (``discopop.fitness.judge``), which holds the API key a sandboxed worker must not.
    """
    policy.eval()
    device = _device(policy)
    gen = torch.Generator(device=device).manual_seed(seed)
    eos_id = tokenizer.eos_token_id
    prompts = task.prompts(split)
    texts: list[str | None] = [None] * len(prompts)
    kls = [0.0] * len(prompts)
    for batch in length_batches(tokenizer, prompts, batch_size or task.score_batch_size, device):
        greedy = decode_loop(policy, batch.ids, task.max_new_tokens, eos_id, sample=False, gen=gen,
                             attention_mask=batch.mask)
        for position, row in zip(batch.positions, greedy.tolist(), strict=True):
            if eos_id in row:
                texts[position] = tokenizer.decode(row[: row.index(eos_id)])
            elif not task.require_eos:  # unfinished: malformed for an exact-answer task, scored as is otherwise
                texts[position] = tokenizer.decode(row)
        sampled = decode_loop(policy, batch.ids, task.max_new_tokens, eos_id, sample=True, gen=gen,
                              attention_mask=batch.mask)
        diff = (_sequence_logps(policy, batch.ids, sampled, eos_id, batch.mask)
                - _sequence_logps(reference, batch.ids, sampled, eos_id, batch.mask))
        for position, value in zip(batch.positions, diff.tolist(), strict=True):
            kls[position] = value
    kl = sum(kls) / len(kls)
    if task.judged:
        return Score(fitness=-kl_coef * kl, reward=0.0, kl=kl, per_prompt=[0.0] * len(prompts), per_prompt_kl=kls,
                     completions=["" if t is None else t for t in texts])
    rewards = task.rewards(prompts, texts, device=device)
    reward = sum(rewards) / len(rewards)
    return Score(fitness=reward - kl_coef * kl, reward=reward, kl=kl, per_prompt=rewards, per_prompt_kl=kls)
