"""Robust DPO (rDPO): an unbiased estimate of the clean-label DPO loss under a known label-flip rate.

loss = ((1 - eps) * -log sigmoid(beta * rho) - eps * -log sigmoid(-beta * rho)) / (1 - 2 * eps),  eps = 0.1

Where cDPO mixes in the flipped label's loss, rDPO subtracts it: in expectation over flips with rate eps
it equals DPO on clean labels, so its gradient does not shrink towards the noisy labels' average.
Source: Chowdhury et al. 2024, "Provably Robust DPO: Aligning Language Models with Noisy Feedback";
TRL's ``loss_type="robust"`` (eps 0.1 here, a common setting, not tuned to the task).
"""

import torch.nn.functional as F

FLIP_RATE = 0.1


def rdpo(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    clean = -F.logsigmoid(beta * rho)
    flipped = -F.logsigmoid(-beta * rho)
    return ((1.0 - FLIP_RATE) * clean - FLIP_RATE * flipped) / (1.0 - 2.0 * FLIP_RATE)
