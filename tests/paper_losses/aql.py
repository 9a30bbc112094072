"""AQL, adaptive quantile loss (beta-scaled form): logistic/hinge blend around a moving quantile.

Source: Lu et al. 2024, "Discovering Preference Optimization Algorithms with and for Large Language
Models" (DiscoPOP), written here in the contract form (beta an argument, not self.beta).
"""

import torch
import torch.nn.functional as F


def adaptive_quantile_loss(
    policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta
):
    percentile = 0.5
    moving_quantile_weight = 0.01
    pi_logratios = policy_chosen_logps - policy_rejected_logps
    ref_logratios = reference_chosen_logps - reference_rejected_logps
    logits = pi_logratios - ref_logratios
    logits = logits * beta
    moving_quantile = percentile + moving_quantile_weight * (torch.sigmoid((logits / 0.05).mean()) - percentile)
    quantile_weights = torch.sigmoid(-(logits / 0.05 - moving_quantile))
    logistic_losses = -F.logsigmoid(logits)
    hinge_losses = torch.relu(1 - logits)
    return quantile_weights * logistic_losses + (1 - quantile_weights) * hinge_losses
