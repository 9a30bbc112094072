"""CELL, combined exponential + logistic loss with a fixed mixing coefficient.

Source: Lu et al. 2024, "Discovering Preference Optimization Algorithms with and for Large Language
Models" (DiscoPOP), written here in the contract form (beta an argument, not self.beta).
"""

import torch
import torch.nn.functional as F


def combined_exp_logistic_loss(
    policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta
):
    pi_logratios = policy_chosen_logps - policy_rejected_logps
    ref_logratios = reference_chosen_logps - reference_rejected_logps
    logits = pi_logratios - ref_logratios
    exp_losses = torch.exp(-beta * logits)
    log_losses = -F.logsigmoid(beta * logits)
    alpha = 0.5
    return alpha * exp_losses + (1 - alpha) * log_losses
