"""The exact per-prompt terms of the fitness: teacher-forced answer probability and the Rao-Blackwellised KL,
checked against brute force on tiny models built from a config."""

from __future__ import annotations

import itertools

import pytest
import torch

from discopop.fitness.likelihood import answer_probabilities, token_kl_sums, up_to_first_eos
from discopop.fitness.scoring import length_batches
from discopop.tasks.synthetic import decode_loop
from discopop.tasks.tiny import tiny_causal_lm


def _perturbed(model, scale: float, seed: int):
    """A copy of ``model`` with seeded Gaussian noise on every weight (a reference that differs from it)."""
    other = type(model)(model.config).eval()
    other.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in other.parameters():
            param.add_(scale * torch.randn(param.shape, generator=gen))
    return other


def _next_token_probs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), dim=-1)


def test_teacher_forced_probability_is_the_product_of_token_probabilities() -> None:
    model, tokenizer = tiny_causal_lm(width=32, layers=2, seed=1)
    model.eval()
    eos = tokenizer.eos_token_id
    prompts = ["12+34=", "1+2=", "99+99=", "5+17="]  # two lengths: left padding and a mask
    answers = ["46", "3", "198", "22"]
    expected = []
    for prompt, answer in zip(prompts, answers, strict=True):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        product = 1.0
        for token in tokenizer(answer, add_special_tokens=False)["input_ids"] + [eos]:
            product *= float(_next_token_probs(model, ids)[token])
            ids = ids + [token]
        expected.append(product)
    got = [0.0] * len(prompts)
    for batch in length_batches(tokenizer, prompts, batch_size=4):
        assert batch.mask is not None  # the padded path is the one under test
        tokens = [tokenizer(answers[i], add_special_tokens=False)["input_ids"] for i in batch.positions]
        for i, p in zip(batch.positions, answer_probabilities(model, batch.ids, tokens, eos, batch.mask).tolist(),
                        strict=True):
            got[i] = p
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-9)
    assert len(set(round(p, 9) for p in expected)) == len(expected)  # distinct: a mixed-up order would show


def test_kl_of_the_reference_itself_is_zero() -> None:
    model, tokenizer = tiny_causal_lm(seed=2)
    model.eval()
    ids = torch.tensor([tokenizer(p, add_special_tokens=False)["input_ids"] for p in ["12+34=", "56+78="]])
    sampled = decode_loop(model, ids, 4, tokenizer.eos_token_id, sample=True, gen=torch.Generator().manual_seed(0))
    kl = token_kl_sums(model, model, ids, sampled, tokenizer.eos_token_id)
    assert kl.abs().max().item() < 1e-6


def _all_completions(vocab: int, length: int, eos: int) -> torch.Tensor:
    """Every distinct completion decoding can produce: tokens after the first EOS are EOS."""
    seen = set()
    for seq in itertools.product(range(vocab), repeat=length):
        seq = list(seq)
        if eos in seq:
            cut = seq.index(eos)
            seq = seq[: cut + 1] + [eos] * (length - cut - 1)
        seen.add(tuple(seq))
    return torch.tensor(sorted(seen))


def _sequence_logps(model, prompt: torch.Tensor, completion: torch.Tensor, eos: int) -> torch.Tensor:
    with torch.no_grad():
        ids = torch.cat([prompt.expand(completion.shape[0], -1), completion], dim=1)
        logits = model(input_ids=ids).logits[:, prompt.shape[1] - 1:-1].float()
        token = torch.log_softmax(logits, -1).gather(2, completion.unsqueeze(2)).squeeze(2)
        return (token * up_to_first_eos(completion, eos)).sum(1)


def test_kl_estimator_matches_brute_force_enumeration() -> None:
    """On a 4-token vocabulary and 3-token answers: E_y[estimate] equals the sequence KL, exactly by
    enumeration, and a Monte-Carlo mean of sampled estimates agrees within its standard error."""
    policy, tokenizer = tiny_causal_lm("ab", width=16, seed=3)
    policy.eval()
    reference = _perturbed(policy, 0.3, seed=4)
    eos, length = tokenizer.eos_token_id, 3
    prompt = torch.tensor([tokenizer("abba", add_special_tokens=False)["input_ids"]])
    completions = _all_completions(len(tokenizer), length, eos)
    logp = _sequence_logps(policy, prompt, completions, eos)
    logq = _sequence_logps(reference, prompt, completions, eos)
    weights = logp.exp()
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-5)  # the enumeration covers every trajectory
    exact = (weights * (logp - logq)).sum().item()
    estimates = token_kl_sums(policy, reference, prompt.expand(len(completions), -1), completions, eos)
    assert (weights * estimates).sum().item() == pytest.approx(exact, rel=1e-4)
    assert exact > 0.05  # the reference differs enough for the check to mean something

    ids = prompt.expand(4000, -1)
    sampled = decode_loop(policy, ids, length, eos, sample=True, gen=torch.Generator().manual_seed(5))
    mc = token_kl_sums(policy, reference, ids, sampled, eos)
    assert abs(mc.mean().item() - exact) < 4 * mc.std().item() / len(mc) ** 0.5
    naive = _sequence_logps(policy, prompt, sampled, eos) - _sequence_logps(reference, prompt, sampled, eos)
    assert mc.std().item() < naive.std().item()  # the point of Rao-Blackwellising: less spread per prompt
