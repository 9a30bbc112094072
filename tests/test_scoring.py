"""Held-out scoring: length-sorted batches keep each prompt's result in its place, and the embedded tasks
score exactly as they did before batches could be padded."""

from __future__ import annotations

from dataclasses import replace

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from discopop.fitness.scoring import length_batches, score_policy
from discopop.tasks.synthetic import decode_loop


def previous_score(policy, reference, tokenizer, task, seed: int, batch_size: int = 512):
    """Scoring as it was before padded batches: one batch per exact prompt length, no attention mask."""
    gen = torch.Generator().manual_seed(seed)
    eos = tokenizer.eos_token_id
    prompts = task.prompts("search")
    by_length: dict[int, list[tuple[int, list[int]]]] = {}
    for i, prompt in enumerate(prompts):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        by_length.setdefault(len(ids), []).append((i, ids))
    rewards, kls = [0.0] * len(prompts), [0.0] * len(prompts)

    def logps(model, ids, completion):
        logits = model(input_ids=torch.cat([ids, completion], 1)).logits[:, ids.shape[1] - 1:-1].float()
        token = torch.log_softmax(logits, -1).gather(2, completion.unsqueeze(2)).squeeze(2)
        is_eos = (completion == eos).int()
        return (token * ((torch.cumsum(is_eos, 1) - is_eos) == 0)).sum(1)

    with torch.no_grad():
        for length in sorted(by_length):
            items = by_length[length]
            for start in range(0, len(items), batch_size):
                chunk = items[start:start + batch_size]
                ids = torch.tensor([row for _, row in chunk])
                greedy = decode_loop(policy, ids, task.max_new_tokens, eos, sample=False, gen=gen)
                for (i, _), row in zip(chunk, greedy.tolist(), strict=True):
                    text = tokenizer.decode(row[: row.index(eos)]) if eos in row else None
                    rewards[i] = task.reward(prompts[i], text) if text is not None else 0.0
                sampled = decode_loop(policy, ids, task.max_new_tokens, eos, sample=True, gen=gen)
                diff = logps(policy, ids, sampled) - logps(reference, ids, sampled)
                for (i, _), value in zip(chunk, diff.tolist(), strict=True):
                    kls[i] = value
    return rewards, kls


def test_embedded_task_scores_exactly_as_before(tiny_task) -> None:
    task, _ = tiny_task
    # A reward that tells every greedy text apart (the tiny model rarely answers right): equal rewards, equal texts.
    task = replace(task, reward=lambda prompt, completion: float(sum(map(ord, completion)) + len(completion)))
    tokenizer = AutoTokenizer.from_pretrained(task.tokenizer_path)
    reference = AutoModelForCausalLM.from_pretrained(task.model_path).eval()
    policy = AutoModelForCausalLM.from_pretrained(task.model_path).eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # a reference that differs from the policy, so the KL terms are not all zero
        for param in reference.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=gen))
    for batch_size in (512, 7):
        score = score_policy(policy, reference, tokenizer, task, seed=11, kl_coef=0.5, batch_size=batch_size)
        rewards, kls = previous_score(policy, reference, tokenizer, task, seed=11, batch_size=batch_size)
        assert score.per_prompt == rewards and score.per_prompt_kl == kls
        assert any(k != 0.0 for k in kls) and len(set(rewards)) > 1
        assert score.fitness == sum(rewards) / len(rewards) - 0.5 * sum(kls) / len(kls)


def test_length_batches_sort_pad_and_remember_positions(tiny_task) -> None:
    task, _ = tiny_task
    tokenizer = AutoTokenizer.from_pretrained(task.tokenizer_path)
    prompts = ["12+34=", "1+2=", "12+3=", "99+99=", "1+23=", "5+5="]
    batches = length_batches(tokenizer, prompts, batch_size=2)
    assert [b.prompts for b in batches] == [["1+2=", "5+5="], ["12+3=", "1+23="], ["12+34=", "99+99="]]
    assert [b.positions for b in batches] == [[1, 5], [2, 4], [0, 3]]
    assert all(b.mask is None for b in batches)  # equal lengths: no padding, no mask
    (mixed,) = length_batches(tokenizer, prompts, batch_size=6)
    assert sorted(mixed.positions) == list(range(6)) and mixed.mask is not None
    lengths = mixed.mask.sum(1).tolist()
    assert lengths == sorted(lengths) and lengths[0] < mixed.ids.shape[1]
    assert mixed.mask[0, 0] == 0 and mixed.ids[0, 0] == tokenizer.pad_token_id  # left padding
