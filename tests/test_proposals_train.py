"""Every reference loss in proposals/ actually trains: a few DPO steps change the parameters."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from discopop.config import TrainingSettings
from discopop.contract.losses import load_loss
from discopop.fitness.training import FineTuner
from discopop.tasks.synthetic import decode_loop

PROPOSALS = sorted((Path(__file__).resolve().parent.parent / "discopop" / "proposals").glob("*.py"))


@pytest.fixture(scope="module")
def fine_tuner(tiny_task):
    task, cfg = tiny_task
    training = TrainingSettings(**{**cfg["training"], "batch_size": 16, "learning_rate": 1e-3, "threads": 1})
    return FineTuner(task, training, Path(tempfile.mkdtemp()))


@pytest.mark.parametrize("path", PROPOSALS, ids=lambda p: p.stem)
def test_reference_loss_changes_parameters(fine_tuner, path: Path) -> None:
    before = {k: v.clone() for k, v in fine_tuner.initial_state.items()}
    result = fine_tuner.run(load_loss(path), seed=0)
    after = fine_tuner.model.state_dict()
    changed = max(float((after[k] - before[k]).abs().max()) for k in before)
    assert result.steps > 0 and changed > 1e-4, f"{path.stem} did not move the parameters"
    assert 0.0 <= result.score.reward <= 1.0


def test_common_random_numbers_make_runs_repeatable(fine_tuner) -> None:
    fn = load_loss(PROPOSALS[0])
    first = fine_tuner.run(fn, seed=3)
    params = {k: v.clone() for k, v in fine_tuner.model.state_dict().items()}
    second = fine_tuner.run(fn, seed=3)
    assert first.score == second.score or first.score.fitness == second.score.fitness
    assert all(torch.equal(params[k], v) for k, v in fine_tuner.model.state_dict().items())


def test_per_prompt_scores_follow_the_prompt_order(fine_tuner, tiny_task) -> None:
    task, _ = tiny_task
    score = fine_tuner.run(load_loss(PROPOSALS[0]), seed=5, split="confirm").score
    prompts = task.prompts("confirm")
    assert len(score.per_prompt) == len(prompts) == len(score.per_prompt_kl)
    tok, eos = fine_tuner.tokenizer, fine_tuner.tokenizer.eos_token_id
    for i in range(0, len(prompts), 4):  # greedy-decode single prompts: each score sits at its prompt's index
        ids = torch.tensor([tok(prompts[i], add_special_tokens=False)["input_ids"]])
        row = decode_loop(fine_tuner.model, ids, task.max_new_tokens, eos, sample=False,
                          gen=torch.Generator()).tolist()[0]
        expected = task.reward(prompts[i], tok.decode(row[: row.index(eos)])) if eos in row else 0.0
        assert score.per_prompt_greedy[i] == expected, i  # the fitness's score is the answer's probability
    assert len(score.per_prompt_greedy) == len(prompts)
    assert abs(sum(score.per_prompt) / len(prompts) - score.reward) < 1e-12
    assert abs(sum(score.per_prompt_kl) / len(prompts) - score.kl) < 1e-9


def test_each_seed_trains_on_its_own_pair_subsample(fine_tuner) -> None:
    total = len(fine_tuner.all_pairs)
    a, b = fine_tuner.pair_subsample(1), fine_tuner.pair_subsample(2)
    assert len(a) == len(b) == round(fine_tuner.pair_fraction * total) < total
    assert a != b and a == fine_tuner.pair_subsample(1) and len(set(a)) == len(a)
    fn = load_loss(PROPOSALS[0])
    steps = {fine_tuner.run(fn, seed=s).steps for s in (1, 2)}
    assert len(steps) == 1, "every seed must take the same number of steps"
    assert len(fine_tuner.trainer.train_dataset) == len(b)


def test_pair_fraction_out_of_range_is_refused(tiny_task) -> None:
    task, cfg = tiny_task
    with pytest.raises(ValueError, match=r"pair_fraction must be in \(0, 1\], got 1.5"):
        FineTuner(task, TrainingSettings(**{**cfg["training"], "pair_fraction": 1.5}), Path(tempfile.mkdtemp()))
