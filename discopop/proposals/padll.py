"""PADLL, performance-adaptive decay logistic loss.

loss = d * (-log sigmoid(beta * rho)),  d = 0.9 * (1 - 0.5 * [rho < 0])

The DPO loss, down-weighted by half on pairs the policy currently ranks wrongly.
Source: Lu et al. 2024 (DiscoPOP paper), Appendix, discovered objective "PADLL".
"""

import torch.nn.functional as F

BASE_DECAY = 0.9
MISMATCH_PENALTY = 0.5


def padll(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    mismatched = (rho < 0).float()
    decay = BASE_DECAY * (1.0 - MISMATCH_PENALTY * mismatched)
    return decay * -F.logsigmoid(beta * rho)
