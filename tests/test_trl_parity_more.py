"""Parity of proposals/ losses with more of TRL's built-in losses, where the two definitions agree.

Beyond sigmoid/hinge/discopop (tests/test_trl_adapter.py):

- ``robust`` with ``label_smoothing=0`` is DPO, so it must match ``dpo.py`` exactly; with ``label_smoothing=0.1``
  it is ``rdpo.py``. ``cdpo.py`` (label-smoothed DPO) is a weighted sum of TRL's ``sigmoid`` and ``robust``.
- ``sigmoid_norm`` and ``ipo`` divide each log-ratio by the completion's token count L; TRL does
  this on purpose and our contract losses see summed log-probs only (see ``ipo.py``'s docstring).
  On data where every completion has the same L, the difference must be *exactly* that
  normalisation: ``dpo.py`` at beta/L equals TRL's ``sigmoid_norm`` at beta, and ``ipo.py`` at beta/L
  equals L**2 times TRL's ``ipo`` at beta (so with plain SGD at lr/L**2 and no clipping, the same
  parameters).
- A Mixture-of-Experts model: TRL adds the router load-balancing loss; so must we.

TRL's other four-input losses (bco_pair, nca_pair, exo_pair, apo_*, sppo_hard, aot*) have proposals/ files of
their own, compared with TRL's code at the loss level (loss and gradients on one batch) in
tests/test_trl_loss_parity.py. ``kto_pair.py`` has no TRL 1.16 counterpart.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helper_trl_train import L, max_param_diff, train
from transformers import GPT2LMHeadModel


def test_robust_without_smoothing_is_dpo(tmp_path: Path) -> None:
    common = {"beta": 0.1, "learning_rate": 1e-3}
    trl_losses, trl_params, _ = train(tmp_path / "trl", None, loss_type="robust", label_smoothing=0.0, **common)
    our_losses, our_params, _ = train(tmp_path / "ours", "dpo.py", **common)
    assert our_losses == pytest.approx(trl_losses, abs=1e-5)
    assert max_param_diff(trl_params, our_params) < 1e-5


# TRL 1.16's ``sigmoid`` ignores ``label_smoothing``, so cDPO = (1-e)*A + e*B (A = -log sigmoid(b*d),
# B = -log sigmoid(-b*d)) is built from what TRL does compute: robust = ((1-e)*A - e*B)/(1-2e), hence
# cDPO = 2(1-e)*sigmoid - (1-2e)*robust, as TRL's weighted sum of loss types.
EPS = 0.1
SMOOTHED = {
    "rdpo.py": {"loss_type": "robust"},
    "cdpo.py": {"loss_type": ["sigmoid", "robust"], "loss_weights": [2 * (1 - EPS), -(1 - 2 * EPS)]},
}


@pytest.mark.parametrize("loss_file", sorted(SMOOTHED))
def test_label_smoothed_losses_match_trl_at_the_files_epsilon(tmp_path: Path, loss_file: str) -> None:
    """rDPO and cDPO as TRL computes them with ``label_smoothing`` 0.1, the constant the files fix."""
    common = {"beta": 0.1, "learning_rate": 1e-3}
    trl_losses, trl_params, _ = train(tmp_path / "trl", None, label_smoothing=EPS, **SMOOTHED[loss_file], **common)
    our_losses, our_params, _ = train(tmp_path / "ours", loss_file, **common)
    assert our_losses == pytest.approx(trl_losses, abs=1e-5)
    assert max_param_diff(trl_params, our_params) < 1e-5
    plain, _, _ = train(tmp_path / "plain", "dpo.py", **common)
    assert plain != pytest.approx(trl_losses, abs=1e-4), "smoothing changed nothing here; the check proved nothing"


def test_sigmoid_norm_is_dpo_at_beta_over_length(tmp_path: Path) -> None:
    trl_losses, trl_params, _ = train(tmp_path / "trl", None, loss_type="sigmoid_norm", beta=0.3, learning_rate=1e-3)
    our_losses, our_params, _ = train(tmp_path / "ours", "dpo.py", beta=0.3 / L, learning_rate=1e-3)
    assert our_losses == pytest.approx(trl_losses, abs=1e-5)
    assert max_param_diff(trl_params, our_params) < 1e-5


def test_ipo_differs_from_trl_exactly_by_length_normalisation(tmp_path: Path) -> None:
    # SGD and no clipping: the L**2 loss factor then cancels exactly against lr / L**2 (Adam would hide it).
    common = {"optim": "sgd", "max_grad_norm": 0.0}
    trl_losses, trl_params, _ = train(tmp_path / "trl", None, loss_type="ipo", beta=0.5, learning_rate=1e-2, **common)
    our_losses, our_params, _ = train(tmp_path / "ours", "ipo.py", beta=0.5 / L, learning_rate=1e-2 / L**2, **common)
    assert [x / L**2 for x in our_losses] == pytest.approx(trl_losses, abs=1e-5)
    assert max_param_diff(trl_params, our_params) < 1e-5
    initial = GPT2LMHeadModel.from_pretrained(tmp_path / "trl" / "model").state_dict()
    assert max_param_diff(trl_params, initial) > 1e-4, "SGD did not move the parameters; the check proved nothing"


def test_moe_router_aux_loss_is_added_as_trl_adds_it(tmp_path: Path) -> None:
    common = {"beta": 0.1, "learning_rate": 1e-3}
    trl_losses, trl_params, _ = train(tmp_path / "trl", None, moe=True, loss_type="sigmoid", **common)
    our_losses, our_params, logs = train(tmp_path / "ours", "dpo.py", moe=True, **common)
    assert our_losses == pytest.approx(trl_losses, abs=1e-5)
    assert max_param_diff(trl_params, our_params) < 1e-5
    assert all(h["aux_loss"] > 0 for h in logs)
