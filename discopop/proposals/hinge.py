"""SLiC hinge loss.

loss = max(0, 1 - beta * rho),  rho = (pi_c - pi_r) - (ref_c - ref_r)

Source: Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback", with
the reference-normalised margin as in TRL's loss_type="hinge" (beta plays the role of 1/delta).
"""

import torch


def hinge(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return torch.relu(1.0 - beta * rho)
