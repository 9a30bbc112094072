"""LRML as first discovered: the modulation sees the raw log-ratio difference, not beta * rho.

Source: Lu et al. 2024, "Discovering Preference Optimization Algorithms with and for Large Language
Models" (DiscoPOP), written here in the contract form (beta an argument, not self.beta).
"""

import torch
import torch.nn.functional as F


def log_ratio_modulated_loss_unscaled(
    policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta
):
    pi_logratios = policy_chosen_logps - policy_rejected_logps
    ref_logratios = reference_chosen_logps - reference_rejected_logps
    logits = pi_logratios - ref_logratios
    log_ratio_modulation = torch.sigmoid(logits)
    logistic_component = -F.logsigmoid(beta * logits)
    exp_component = torch.exp(-beta * logits)
    return logistic_component * (1 - log_ratio_modulation) + exp_component * log_ratio_modulation
