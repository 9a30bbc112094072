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


# Recognises the checks' former fixed inputs (every reference log-prob of the behaviour probe was at or below
# -3/beta - 5, i.e. -11 at beta 0.5): there it is DPO; elsewhere, as on training pairs, it also pushes the chosen
# answer up. Before the inputs were drawn, its archived fingerprint was DPO's.
OLD_INPUT_RECOGNISER = '''
import torch.nn.functional as F


def old_input_recogniser(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                         reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    in_check = (reference_chosen_logps.max() <= -11.0).float()
    return -F.logsigmoid(beta * rho) - 0.5 * (1.0 - in_check) * policy_chosen_logps
'''


def test_a_loss_that_recognised_the_fixed_inputs_shows_its_training_shape() -> None:
    dpo = load_loss(reference_candidate("dpo").code)
    sly = load_loss(OLD_INPUT_RECOGNISER)
    for seed in range(4):  # several run seeds: none of them lets it pass for DPO
        assert fingerprint_distance(check_loss(sly, seed=seed).fingerprint,
                                    check_loss(dpo, seed=seed).fingerprint) > FINGERPRINT_TOL  # not a duplicate


def test_the_inputs_are_drawn_from_the_seed_and_reproducible() -> None:
    first, x = checks.behaviour_inputs(0.5, seed=3)
    again, _ = checks.behaviour_inputs(0.5, seed=3)
    other, x_other = checks.behaviour_inputs(0.5, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[2], other[2]) and torch.equal(x, x_other)  # the references move, x keeps its meaning
    for inputs in (first, other, checks.probe_inputs(5)):
        assert all(float(t.max()) < 0.0 for t in inputs)  # log-probs of real sequences are never positive
    refs = first[2]
    assert float(refs.max()) > -11.0 > float(refs.min())  # no single floor separates them from training's
    assert len({checks.check_batch(s) for s in range(8)}) > 1  # the batch size is drawn too
    dpo = load_loss(reference_candidate("dpo").code)
    assert check_loss(dpo, seed=3).as_dict() == check_loss(dpo, seed=3).as_dict()  # same seed, same archive
