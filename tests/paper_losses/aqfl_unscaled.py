"""AQFL as first discovered: the quantile statistics use the raw log-ratio difference.

Source: Lu et al. 2024, "Discovering Preference Optimization Algorithms with and for Large Language
Models" (DiscoPOP), written here in the contract form (beta an argument, not self.beta).
"""

import torch
import torch.nn.functional as F


def adaptive_quantile_feedback_loss_unscaled(
    policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta
):
    quantile_update_rate = 0.05
    distance_scale = 0.1
    pi_logratios = policy_chosen_logps - policy_rejected_logps
    ref_logratios = reference_chosen_logps - reference_rejected_logps
    logits = pi_logratios - ref_logratios
    adaptive_quantile = logits.std() * torch.sigmoid(-logits).mean()
    adaptive_quantile += quantile_update_rate * (torch.sigmoid(logits.mean()) - adaptive_quantile)
    blend_rate = torch.sigmoid(distance_scale * (logits - adaptive_quantile).abs())
    logistic_losses = -F.logsigmoid(beta * logits)
    hinge_losses = torch.relu(1 - beta * logits)
    return blend_rate * logistic_losses + (1 - blend_rate) * hinge_losses
