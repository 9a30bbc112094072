"""A discovered loss that is exactly a weighted sum of TRL loss types is reported as TRL's own ``DPOConfig`` options,
and those options train the same as the loss itself (issue 28 item 4).

The check reports are computed in this process on test-owned code (the product computes them in the sandboxed check
job); the matching in ``report/trl_options.py`` never runs candidate code.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helper_trl_train import max_param_diff, train

from discopop.archive import Archive
from discopop.contract.checks import check_loss
from discopop.contract.losses import load_loss
from discopop.proposers.base import Candidate
from discopop.proposers.reference import reference_candidate
from discopop.report.export import export_candidate
from discopop.report.trl_options import match_trl

MIX = '''import torch.nn.functional as F


def mix(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return 0.3 * -F.logsigmoid(beta * rho) + 0.7 * F.relu(1 - beta * rho)
'''
# A near miss: the same mixture with hinge's margin moved from 1 to 1.05.
NEAR = MIX.replace("1 - beta * rho", "1.05 - beta * rho")


def report(code: str, beta: float = 0.5) -> dict:
    return check_loss(load_loss(code), beta=beta).as_dict()


@pytest.mark.parametrize(("reference", "loss_type", "extra"), [
    ("dpo", ("sigmoid",), {}),
    ("hinge", ("hinge",), {}),
    ("lrml", ("discopop",), {"discopop_tau": 0.05}),
    ("rdpo", ("robust",), {"label_smoothing": 0.1}),
    ("exo_pair", ("exo_pair",), {"label_smoothing": 1e-3}),
    ("nca_pair", ("nca_pair",), {}),
    ("sppo_hard", ("sppo_hard",), {}),
    ("apo_down", ("apo_down",), {}),
])
def test_trls_own_losses_are_found_as_themselves(reference: str, loss_type: tuple[str, ...], extra: dict) -> None:
    options = match_trl(report(reference_candidate(reference).code))
    assert options is not None, f"{reference} is TRL's {loss_type[0]} and was not found"
    assert options.loss_type == loss_type and options.loss_weights == (1.0,)
    assert {k: getattr(options, k) for k in extra} == extra
    assert options.beta == 0.5 and options.residual < 1e-5


def test_a_weighted_sum_is_found_with_its_weights() -> None:
    options = match_trl(report(MIX, beta=0.1))
    assert options is not None
    assert dict(zip(options.loss_type, options.loss_weights, strict=True)) == {"hinge": 0.7, "sigmoid": 0.3}
    assert options.config_text(1e-4) == ("DPOConfig(loss_type=['hinge', 'sigmoid'], loss_weights=[0.7, 0.3], "
                                         "beta=0.1, learning_rate=0.0001)")


@pytest.mark.parametrize("code", [NEAR, reference_candidate("aqfl").code, reference_candidate("padll").code,
                                  reference_candidate("ipo").code], ids=["near_miss", "aqfl", "padll", "ipo"])
def test_other_losses_are_not_claimed(code: str) -> None:
    """IPO is TRL's only after length normalisation; AQFL, PADLL and a 5% margin change are no TRL combination."""
    assert match_trl(report(code)) is None


def test_reports_that_cannot_say_give_none() -> None:
    full = report(MIX)
    assert match_trl(full) is not None
    assert match_trl({**full, "fingerprint_scale": None}) is None  # archived before the scale was recorded
    assert match_trl({**full, "fingerprint": full["fingerprint"][:-1]}) is None  # another probe
    assert match_trl({**full, "fingerprint_scale": full["fingerprint_scale"] * 1.01}) is not None  # weights scale
    assert match_trl(None) is None and match_trl({"fingerprint": "x"}) is None


@pytest.mark.parametrize("code", [MIX, reference_candidate("cdpo", 0.25).code], ids=["hinge_sigmoid", "cdpo_0.25"])
def test_the_reported_options_train_as_the_loss_does(tmp_path: Path, code: str) -> None:
    """TRL's DPOTrainer with the reported options and DiscoveredLossDPOTrainer with the loss: the same parameters."""
    options = match_trl(report(code, beta=0.1))
    assert options is not None
    config = {"loss_type": list(options.loss_type), "loss_weights": list(options.loss_weights)}
    config.update({k: v for k, v in (("label_smoothing", options.label_smoothing),
                                     ("discopop_tau", options.discopop_tau)) if v is not None})
    common = {"beta": options.beta, "learning_rate": 1e-3}
    trl_losses, trl_params, _ = train(tmp_path / "trl", None, **config, **common)
    our_losses, our_params, _ = train(tmp_path / "ours", code, **common)
    assert our_losses == pytest.approx(trl_losses, abs=1e-5)
    assert max_param_diff(trl_params, our_params) < 1e-5
    if code == MIX:  # once is enough to show the comparison can fail
        plain, _, _ = train(tmp_path / "plain", None, loss_type="sigmoid", **common)
        assert plain != pytest.approx(trl_losses, abs=1e-4), "the options trained as DPO: the check proved nothing"


def test_export_names_the_options_at_the_runs_beta(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"training": {"beta": 0.5}}))
    arch = Archive(run / "archive.sqlite")
    ids = {}
    for name, code, checks in [("mix", MIX, report(MIX)), ("aqfl", reference_candidate("aqfl").code, report(
            reference_candidate("aqfl").code)), ("old", MIX, {**report(MIX), "fingerprint_scale": None})]:
        ids[name] = arch.add(Candidate(name=name, code=code, proposer="evolution"), generation=1)
        arch.finish(ids[name], "scored", fitness=0.8, metrics={"checks": checks, "learning_rate": 2e-5})
    texts = {name: export_candidate(arch, row_id) for name, row_id in ids.items()}
    arch.close()
    assert ("args = DPOConfig(output_dir=\"out\", loss_type=['hinge', 'sigmoid'], loss_weights=[0.7, 0.3], "
            "beta=0.5, learning_rate=2e-05)") in texts["mix"]
    assert "Not a weighted sum of TRL's loss types" in texts["aqfl"] and "loss_weights" not in texts["aqfl"]
    assert "was not recorded for this run" in texts["old"]
