"""Held-out scoring: length-sorted batches keep each prompt's result in its place, the embedded tasks' greedy
reward is what it was before batches could be padded, the fitness scores them by the probability of the correct
answer unless told otherwise, and pays for KL."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from discopop.config.base import ConfigError
from discopop.config.task import SyntheticTaskSettings
from discopop.fitness.likelihood import answer_probabilities, token_kl_sums
from discopop.fitness.scoring import length_batches, score_policy
from discopop.tasks.synthetic import decode_loop, encode


def previous_score(policy, reference, tokenizer, task, seed: int, batch_size: int = 512):
    """Greedy scoring as it was before padded batches: one batch per exact prompt length, no attention mask
    (with today's KL estimate on the same sampled completions)."""
    gen = torch.Generator().manual_seed(seed)
    eos = tokenizer.eos_token_id
    prompts = task.prompts("search")
    by_length: dict[int, list[tuple[int, list[int]]]] = {}
    for i, prompt in enumerate(prompts):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        by_length.setdefault(len(ids), []).append((i, ids))
    rewards, kls = [0.0] * len(prompts), [0.0] * len(prompts)

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
                diff = token_kl_sums(policy, reference, ids, sampled, eos)
                for (i, _), value in zip(chunk, diff.tolist(), strict=True):
                    kls[i] = value
    return rewards, kls


def _models(task, noise: float = 0.05):
    tokenizer = AutoTokenizer.from_pretrained(task.tokenizer_path)
    reference = AutoModelForCausalLM.from_pretrained(task.model_path).eval()
    policy = AutoModelForCausalLM.from_pretrained(task.model_path).eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # a reference that differs from the policy, so the KL terms are not all zero
        for param in reference.parameters():
            param.add_(noise * torch.randn(param.shape, generator=gen))
    return policy, reference, tokenizer


def test_embedded_task_scores_exactly_as_before(tiny_task) -> None:
    task, _ = tiny_task
    # A reward that tells every greedy text apart (the tiny model rarely answers right): equal rewards, equal texts.
    task = replace(task, reward=lambda prompt, completion: float(sum(map(ord, completion)) + len(completion)),
                   score="greedy")
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
        assert score.per_prompt == rewards == score.per_prompt_greedy and score.per_prompt_kl == kls
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


def test_the_fitness_scores_by_answer_probability_by_default(tiny_task) -> None:
    task, cfg = tiny_task
    assert task.score == "probability" and task.answer is not None
    policy, reference, tokenizer = _models(task)
    score = score_policy(policy, reference, tokenizer, task, seed=5, kl_coef=0.5)
    prompts = task.prompts("search")
    answers = [tokenizer(task.answer(p), add_special_tokens=False)["input_ids"] for p in prompts]
    expected = answer_probabilities(policy, encode(tokenizer, prompts), answers, tokenizer.eos_token_id).tolist()
    assert score.per_prompt == pytest.approx(expected, abs=1e-6)
    assert all(0.0 < p < 1.0 for p in score.per_prompt) and len(set(score.per_prompt)) > len(prompts) // 2
    assert set(score.per_prompt_greedy) <= {0.0, 1.0}  # greedy accuracy, reported beside it
    assert score.greedy == sum(score.per_prompt_greedy) / len(prompts)
    assert score.reward == pytest.approx(sum(expected) / len(expected))
    assert score.fitness == pytest.approx(score.reward - 0.5 * score.kl)
    assert all(k >= 0.0 for k in score.per_prompt_kl) and score.kl > 0.0

    greedy = score_policy(policy, reference, tokenizer, replace(task, score="greedy"), seed=5, kl_coef=0.5)
    assert greedy.per_prompt == score.per_prompt_greedy and greedy.reward == score.greedy
    assert greedy.per_prompt_kl == score.per_prompt_kl  # the same sampled completions: only the score changed


def test_task_score_is_a_setting_that_never_rebuilds_the_task(tiny_task) -> None:
    from conftest import TINY_TASK

    from discopop.config.compose import compose
    from discopop.tasks import build_key, load_task

    task, cfg = tiny_task
    greedy_cfg, _ = compose([*TINY_TASK, "task.score=greedy"])
    assert build_key(greedy_cfg["task"]) == build_key(cfg["task"])  # same cache entry
    greedy_task = load_task(greedy_cfg["task"])
    assert greedy_task.score == "greedy" and greedy_task.model_path == task.model_path
    with pytest.raises(ConfigError, match="task.score"):
        SyntheticTaskSettings(score="sampled").check()


def test_more_score_bought_with_much_more_kl_does_not_win() -> None:
    """The issue's measurement, at the same rate: AQFL +0.022 over DPO with KL 0.30 against DPO's 0.16."""
    from discopop.fitness.scoring import per_prompt_fitness

    kl_coef = SyntheticTaskSettings().kl_coef
    gen = torch.Generator().manual_seed(0)
    dpo = (0.60 + 0.2 * torch.rand(400, generator=gen)).tolist()
    drifted = [p + 0.022 for p in dpo]
    dpo_kl = (0.16 * 2 * torch.rand(400, generator=gen)).tolist()
    drifted_kl = [k * 0.30 / 0.16 for k in dpo_kl]
    dpo_fit = per_prompt_fitness(dpo, dpo_kl, kl_coef)
    drifted_fit = per_prompt_fitness(drifted, drifted_kl, kl_coef)
    assert sum(drifted) > sum(dpo)  # the drifted loss has the higher score ...
    assert sum(drifted_fit) < sum(dpo_fit)  # ... and loses on the fitness, in the per-prompt terms stats pairs


def test_prompts_tokenised_once_score_exactly_as_tokenised_per_call(tiny_task) -> None:
    """A fine-tuner tokenises a split's prompts and answers once (``prepare_scoring``) and reuses them for every
    candidate: the score must be the one ``score_policy`` computes when it tokenises them itself, bit for bit."""
    from discopop.fitness.scoring import prepare_scoring

    task, _ = tiny_task
    policy, reference, tokenizer = _models(task)
    for batch_size in (None, 7):
        prepared = prepare_scoring(tokenizer, task, "search", batch_size)
        assert len(prepared.batches) == len(prepared.answers) and all(a is not None for a in prepared.answers)
        fresh = score_policy(policy, reference, tokenizer, task, seed=5, kl_coef=0.5, batch_size=batch_size)
        for _ in range(2):  # reused: nothing in it is consumed by a scoring pass
            reused = score_policy(policy, reference, tokenizer, task, seed=5, kl_coef=0.5, batch_size=batch_size,
                                  prepared=prepared)
            assert reused == fresh and reused.per_prompt_kl == fresh.per_prompt_kl
    with pytest.raises(ValueError, match="split"):
        score_policy(policy, reference, tokenizer, task, seed=5, kl_coef=0.5, prepared=prepared, split="confirm")
