"""AQFL, adaptive quantile feedback loss (beta-scaled form).

Source: Lu et al. 2024, "Discovering Preference Optimization Algorithms with and for Large Language
Models" (DiscoPOP), written here in the contract form (beta an argument, not self.beta).
"""

import torch
import torch.nn.functional as F


def adaptive_quantile_feedback_loss(
    policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta
):
    quantile_update_rate = 0.05
    distance_scale = 0.1
    pi_logratios = policy_chosen_logps - policy_rejected_logps
    ref_logratios = reference_chosen_logps - reference_rejected_logps
    logits = pi_logratios - ref_logratios
    logits = logits * beta
    logits_std = (logits / 0.05).std()
    adaptive_quantile = logits_std * torch.sigmoid(-logits / 0.05).mean()
    adaptive_quantile += quantile_update_rate * (torch.sigmoid((logits / 0.05).mean()) - adaptive_quantile)
    distance_from_quantile = (logits / 0.05 - adaptive_quantile).abs()
    blend_rate = torch.sigmoid(distance_scale * distance_from_quantile)
    logistic_losses = -F.logsigmoid(logits)
    hinge_losses = torch.relu(1 - logits)
    return blend_rate * logistic_losses + (1 - blend_rate) * hinge_losses
