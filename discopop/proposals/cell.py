"""CELL, combined exponential + logistic loss.

loss = 0.5 * exp(-beta * rho) + 0.5 * (-log sigmoid(beta * rho))

Source: Lu et al. 2024 (DiscoPOP paper), Appendix, discovered objective "CELL".
"""

import torch
import torch.nn.functional as F

ALPHA = 0.5


def cell(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return ALPHA * torch.exp(-beta * rho) + (1.0 - ALPHA) * -F.logsigmoid(beta * rho)
