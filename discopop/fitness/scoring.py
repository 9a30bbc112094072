"""Held-out scoring of a tuned policy: reward, KL to the reference, and fitness.

* reward (the score the fitness uses), per held-out prompt:
  - where the reward is exact match (the embedded tasks, ``task.answer`` known) and ``task.score`` is
    ``probability`` (the default): the policy's teacher-forced probability of the correct answer, which
    is exactly the expected 0/1 reward of a sampled completion (``discopop.fitness.likelihood``);
  - otherwise (``task.score=greedy``, a reward model, a judge): the task reward of the *greedy*
    completion (what a deployed model does, far less noisy than one sample per prompt).
  Greedy accuracy is computed either way and reported beside it (``Score.greedy``).
* KL(policy || reference) of each prompt: the exact next-token KL summed along one completion sampled
  from the policy (Rao-Blackwellised, unbiased for the sequence KL; ``likelihood.token_kl_sums``);
* fitness = reward - kl_coef * KL: the KL-regularised objective every DPO-family loss derives its
  optimum from. ``kl_coef`` is per task (``task.kl_coef``): without it a loss "wins" by moving further
  from the reference than its rivals (measured: +0.022 greedy accuracy bought with twice DPO's KL).

A :class:`Score` also keeps the per-prompt reward and KL terms (in ``task.prompts(split)`` order):
two losses scored on the same prompts are compared prompt by prompt (``discopop.fitness.stats``), which
is far more precise than comparing two means, and tells prompt noise apart from seed noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from discopop.fitness.likelihood import answer_probabilities, token_kl_sums
from discopop.tasks import Task
from discopop.tasks.synthetic import decode_loop


@dataclass
class Score:
    fitness: float
    reward: float
    kl: float
    seconds: float = 0.0
    per_prompt: list[float] = field(default_factory=list)  # the fitness's score of each prompt, task.prompts order
    per_prompt_kl: list[float] = field(default_factory=list)  # KL estimate of each prompt, same order
    completions: list[str] | None = None  # greedy completions, same order: only for a judged task
    greedy: float | None = None  # mean reward of the greedy completions (accuracy on an exact task); None: judged
    per_prompt_greedy: list[float] = field(default_factory=list)  # greedy reward of each prompt, same order

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def per_prompt_fitness(rewards: list[float], kls: list[float], kl_coef: float) -> list[float]:
    """Each prompt's share of the fitness (their mean is the fitness): reward - kl_coef * KL."""
    if kl_coef == 0.0:
        return [float(r) for r in rewards]
    return [r - kl_coef * k for r, k in zip(rewards, kls, strict=True)]


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


def uses_probability(task: Task) -> bool:
    """Whether the fitness scores ``task`` by the probability of its correct answer (else: greedy reward)."""
    return task.answer is not None and task.score == "probability"


@dataclass
class ScoringInputs:
    """A split's prompts tokenised and batched for scoring, with each batch's correct answers as token ids.

    The same for every policy scored on that split, so a worker that scores many candidates builds it once
    (``prepare_scoring``) instead of tokenising the prompts and answers again in every ``score_policy``.
    """

    split: str
    prompts: list[str]
    batches: list[PromptBatch]
    answers: list[list[list[int]] | None]  # per batch: the answers' ids (no EOS), None for a task without answers


def prepare_scoring(tokenizer, task: Task, split: str, batch_size: int | None = None,
                    device: torch.device | str = "cpu") -> ScoringInputs:
    """Tokenise and batch ``split``'s prompts (and answers) as ``score_policy`` scores them."""
    prompts = task.prompts(split)
    batches = length_batches(tokenizer, prompts, batch_size or task.score_batch_size, device)
    answers = [None if task.answer is None else
               [tokenizer(task.answer(p), add_special_tokens=False)["input_ids"] for p in batch.prompts]
               for batch in batches]
    return ScoringInputs(split, prompts, batches, answers)


@torch.no_grad()
def score_policy(policy, reference, tokenizer, task: Task, seed: int, kl_coef: float,
                 split: str = "search", batch_size: int | None = None,
                 prepared: ScoringInputs | None = None) -> Score:
    """Score ``policy`` on the task's held-out prompts (both models in eval mode, no grad).

    Per batch: greedy decoding (greedy reward), one sampled completion (KL), and, for an exact-answer
    task, one teacher-forced pass over the correct answers (probability score). Decoding and the
    reward model run on the policy's device. For a judged task (``task.judged``) the reward is left
    at 0 and the greedy completions are returned instead: the judge runs in the trusted main process
    (``discopop.fitness.judge``), which holds the API key a sandboxed worker must not. ``prepared``: the split's
    prompts already tokenised (``prepare_scoring`` with this tokenizer, task and batch size, on the policy's device).
    """
    policy.eval()
    device = _device(policy)
    gen = torch.Generator(device=device).manual_seed(seed)
    eos_id = tokenizer.eos_token_id
    if prepared is None:
        prepared = prepare_scoring(tokenizer, task, split, batch_size, device)
    elif prepared.split != split:
        raise ValueError(f"score_policy: prepared inputs are for split {prepared.split!r}, not {split!r}")
    prompts = prepared.prompts
    texts: list[str | None] = [None] * len(prompts)
    kls = [0.0] * len(prompts)
    probabilities = [0.0] * len(prompts)
    for batch, answers in zip(prepared.batches, prepared.answers, strict=True):
        greedy = decode_loop(policy, batch.ids, task.max_new_tokens, eos_id, sample=False, gen=gen,
                             attention_mask=batch.mask)
        for position, row in zip(batch.positions, greedy.tolist(), strict=True):
            if eos_id in row:
                texts[position] = tokenizer.decode(row[: row.index(eos_id)])
            elif not task.require_eos:  # unfinished: malformed for an exact-answer task, scored as is otherwise
                texts[position] = tokenizer.decode(row)
        sampled = decode_loop(policy, batch.ids, task.max_new_tokens, eos_id, sample=True, gen=gen,
                              attention_mask=batch.mask)
        kl = token_kl_sums(policy, reference, batch.ids, sampled, eos_id, batch.mask)
        for position, value in zip(batch.positions, kl.tolist(), strict=True):
            kls[position] = value
        if answers is not None:
            probability = answer_probabilities(policy, batch.ids, answers, eos_id, batch.mask)
            for position, value in zip(batch.positions, probability.tolist(), strict=True):
                probabilities[position] = value
    kl = sum(kls) / len(kls)
    if task.judged:
        return Score(fitness=-kl_coef * kl, reward=0.0, kl=kl, per_prompt=[0.0] * len(prompts), per_prompt_kl=kls,
                     completions=["" if t is None else t for t in texts])
    greedy_rewards = task.rewards(prompts, texts, device=device)
    rewards = probabilities if uses_probability(task) else greedy_rewards
    reward = sum(rewards) / len(rewards)
    return Score(fitness=reward - kl_coef * kl, reward=reward, kl=kl, per_prompt=rewards, per_prompt_kl=kls,
                 greedy=sum(greedy_rewards) / len(greedy_rewards), per_prompt_greedy=greedy_rewards)
