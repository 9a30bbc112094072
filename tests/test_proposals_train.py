"""Every reference loss in proposals/ actually trains: a few DPO steps change the parameters."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from discopop.losses import load_loss
from discopop.training import FineTuner

PROPOSALS = sorted((Path(__file__).resolve().parent.parent / "discopop" / "proposals").glob("*.py"))


@pytest.fixture(scope="module")
def fine_tuner(tiny_task):
    task, cfg = tiny_task
    training = {**cfg["training"], "batch_size": 16, "learning_rate": 1e-3, "threads": 1}
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
