"""DBAQL as first discovered, including its unused quantile expression (a no-op statement).

Source: Lu et al. 2024, "Discovering Preference Optimization Algorithms with and for Large Language
Models" (DiscoPOP), written here in the contract form (beta an argument, not self.beta).
"""

import torch
import torch.nn.functional as F


def dynamic_blended_adaptive_quantile_loss_unscaled(
    policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta
):
    starting_quantile = 0.5
    quantile_adapt_rate = 0.01
    temperature = 0.9
    dynamic_blend_rate = 1.0
    pi_logratios = policy_chosen_logps - policy_rejected_logps
    ref_logratios = reference_chosen_logps - reference_rejected_logps
    logits = pi_logratios - ref_logratios
    logits_variability = logits.var()
    starting_quantile + quantile_adapt_rate * (torch.sigmoid(logits.mean()) - starting_quantile)
    dynamic_blend_coeff = torch.sigmoid(logits_variability) * dynamic_blend_rate
    logistic_loss = -F.logsigmoid(beta * logits / temperature)
    exp_loss = torch.exp(-beta * logits * temperature)
    return dynamic_blend_coeff * logistic_loss + (1 - dynamic_blend_coeff) * exp_loss
