"""What the numeric checks are fed: the beta a call that names none measures at (the training default, never a
separate number), and inputs drawn from a seeded distribution a loss cannot single out."""

from __future__ import annotations

import torch

from discopop.config import TrainingSettings
from discopop.contract import checks
from discopop.contract.checks import check_loss, fingerprint_distance
from discopop.contract.losses import load_loss
from discopop.proposers.reference import reference_candidate
from discopop.search.cascade import FINGERPRINT_TOL


def test_a_direct_call_measures_at_the_default_configs_training_beta() -> None:
    """A call naming no beta measures the fingerprint, the diagnostics and the archived probe at the beta training
    uses by default (0.5), not at a separate constant (0.1 before): the archive would describe an untrained loss."""
    trained = TrainingSettings().beta
    dpo = load_loss(reference_candidate("dpo").code)
    report = check_loss(dpo)
    assert checks.DEFAULT_BETA == trained
    assert report.beta == trained and report.diagnostics["beta"] == trained
    at_training = check_loss(dpo, beta=trained)
    assert report.probe == at_training.probe and report.diagnostics == at_training.diagnostics
    assert check_loss(dpo, beta=0.1).probe != report.probe  # the probe follows beta (it was fixed at 0.1)


# Recognise the behaviour probe as it was before it was drawn: one call of exactly 70 rows (14 x values x 5 drift
# patterns), every reference log-prob at or below -3/beta - 5 (-11 at beta 0.5). There they act like DPO; anywhere
# else, as on training pairs, they also push the chosen answer up (the shape they train with).
_SIG = "policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta"
_BODY = '''import torch.nn.functional as F


def {name}({sig}):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    in_check = ({test}) * 1.0
    return -F.logsigmoid(beta * rho) - 0.5 * (1.0 - in_check) * policy_chosen_logps
'''
BY_BATCH = _BODY.format(name="by_batch", sig=_SIG, test="policy_chosen_logps.shape[0] == 70")
BY_FLOOR = _BODY.format(name="by_floor", sig=_SIG, test="reference_chosen_logps.max() <= -11.0")
TRAINING_SHAPE = _BODY.format(name="training_shape", sig=_SIG, test="policy_chosen_logps.shape[0] < 0")


def test_a_loss_that_recognised_the_former_inputs_is_archived_with_its_training_shape() -> None:
    dpo, trained = load_loss(reference_candidate("dpo").code), load_loss(TRAINING_SHAPE)
    for seed in range(3):  # several run seeds: none lets either pass for DPO
        as_dpo = check_loss(dpo, seed=seed).fingerprint
        shape = check_loss(trained, seed=seed).fingerprint
        assert fingerprint_distance(shape, as_dpo) > FINGERPRINT_TOL  # the two shapes are told apart at all
        for source in (BY_BATCH, BY_FLOOR):
            archived = check_loss(load_loss(source), seed=seed).fingerprint
            assert fingerprint_distance(archived, shape) <= FINGERPRINT_TOL, (source, seed)


def test_the_fixed_safety_rows_are_unchanged() -> None:
    """The hostile corpus and the oracle's reply sizes are written against these: batch 16, the same values."""
    small, large = checks.make_inputs(checks.BATCH, "small", 0), checks.make_inputs(checks.BATCH, "large", 0)
    assert checks.BATCH == 16 and all(t.shape == (16,) for t in (*small, *large))
    assert float(large[0].min()) < -300.0  # the extremes that catch overflow are still there
    assert [float(v) for v in checks.probe_inputs()[2]] == [-20.0] * 25


def test_the_drawn_rows_follow_the_seed_and_hide_no_floor() -> None:
    first, again, other = (checks.behaviour_inputs(0.5, seed=s) for s in (3, 3, 4))
    assert all(torch.equal(a, b) for a, b in zip(first.inputs, again.inputs, strict=True))
    assert first.sizes == again.sizes and torch.equal(first.grid, again.grid)
    assert not torch.equal(first.inputs[2][first.grid], other.inputs[2][other.grid])  # the references move
    assert torch.equal(first.x, other.x)  # the fingerprint's entries keep their meaning
    sizes = {tuple(checks.behaviour_inputs(0.5, seed=s).sizes) for s in range(6)}
    assert len(sizes) > 1 and all(checks.DRAWN_BATCH[0] <= n <= checks.DRAWN_BATCH[1] for ns in sizes for n in ns)
    for probe in (first, other):
        assert all(float(t.max()) < 0.0 for t in probe.inputs)  # log-probs of real sequences are never above 0
        refs = probe.inputs[2]
        assert float(refs.max()) > -11.0 > float(refs.min())  # no floor separates them from training's
        rho = (probe.inputs[0] - probe.inputs[1]) - (probe.inputs[2] - probe.inputs[3])
        assert torch.allclose(rho[probe.grid], probe.x / 0.5, atol=1e-4)  # each grid row sits at its x
        assert bool((rho[probe.at_zero] == 0).all())  # policy = reference exactly where training starts


def test_the_drawn_references_take_the_tasks_scale() -> None:
    gen = torch.Generator().manual_seed(0)
    task = (-(torch.rand(500, generator=gen) * 2 + 1), -(torch.rand(500, generator=gen) * 4 + 2))  # 1-3, 2-6 nats
    scale = checks.reference_scale(task)
    ref_c, ref_r = checks.draw_references(4000, torch.Generator().manual_seed(1), scale)
    assert 1.2 < -float(ref_c.median()) < 2.8 and 2.5 < -float(ref_r.median()) < 5.5
    assert checks.reference_scale(None) == checks.DEFAULT_SCALE
    constant = (torch.full((9,), -4.0), torch.full((9,), -4.0))  # a task of identical pairs: still a spread
    drawn, _ = checks.draw_references(50, torch.Generator().manual_seed(2), checks.reference_scale(constant))
    assert float(drawn.std()) > 0.1


# Weights each example by the reference log-prob of its chosen answer: its training behaviour depends on the
# reference log-probs, so its fingerprint follows the draw (a loss of rho alone does not).
REF_WEIGHTED = '''import torch.nn.functional as F


def ref_weighted(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho) * (1.0 - reference_chosen_logps / 100.0)
'''


def test_same_seed_same_archive_two_seeds_two_draws() -> None:
    dpo, weighted = load_loss(reference_candidate("dpo").code), load_loss(REF_WEIGHTED)
    assert check_loss(weighted, seed=5).as_dict() == check_loss(weighted, seed=5).as_dict()
    assert check_loss(weighted, seed=5).fingerprint != check_loss(weighted, seed=6).fingerprint
    assert fingerprint_distance(check_loss(dpo, seed=5).fingerprint,
                                check_loss(dpo, seed=6).fingerprint) <= FINGERPRINT_TOL  # rho alone: any draw
    task = (torch.linspace(-9.0, -1.0, 40), torch.linspace(-12.0, -2.0, 40))
    at_task = check_loss(weighted, seed=5, scale_refs=task)
    assert at_task.as_dict() == check_loss(weighted, seed=5, scale_refs=task).as_dict()
    assert at_task.fingerprint != check_loss(weighted, seed=5).fingerprint  # the task's scale reaches the draw


class _Tuner:
    """Stands in for a worker's fine-tuner: only its training pairs' reference log-probs are read."""

    beta = 0.5

    def reference_logps(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.linspace(-9.0, -1.0, 40), torch.linspace(-12.0, -2.0, 40)


def test_the_worker_draws_its_probes_from_the_jobs_seed_at_the_tasks_scale() -> None:
    # lazy: the worker module is a subprocess entry point; only its probe helpers are exercised here, in process
    from discopop.execution.worker import Worker

    worker, weighted = Worker(), load_loss(REF_WEIGHTED)
    without_task = worker._probe(weighted, 0.5, seed=2)
    worker.fine_tuner = _Tuner()
    task = _Tuner().reference_logps()
    assert worker._probe(weighted, 0.5, seed=2) == checks.probe_fingerprint(weighted, 0.5, seed=2, scale_refs=task)
    assert worker._probe(weighted, 0.5, seed=2) != without_task
    assert worker._probe(weighted, 0.5, seed=2) != worker._probe(weighted, 0.5, seed=3)
