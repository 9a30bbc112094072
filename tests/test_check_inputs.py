"""What the numeric checks are fed: the beta a call that names none measures at (the training default, never a
separate number), and inputs drawn from a seeded distribution a loss cannot single out."""

from __future__ import annotations

from discopop.config import TrainingSettings
from discopop.contract import checks
from discopop.contract.checks import check_loss
from discopop.contract.losses import load_loss
from discopop.proposers.reference import reference_candidate


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
