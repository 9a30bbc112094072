"""LRML / DiscoPOP, log-ratio modulated loss (the paper's main result, tau = 0.05).

logits = beta * rho;  w = sigmoid(logits / tau);  loss = (1 - w) * -log sigmoid(logits) + w * exp(-logits)

Source: Lu et al. 2024, "Discovering Preference Optimization Algorithms with and for Large Language
Models" (DiscoPOP), written here in the contract form (beta an argument, not self.beta).
"""

import torch
import torch.nn.functional as F


def log_ratio_modulated_loss(
    policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta
):
    pi_logratios = policy_chosen_logps - policy_rejected_logps
    ref_logratios = reference_chosen_logps - reference_rejected_logps
    logits = pi_logratios - ref_logratios
    logits = logits * beta
    tau = 0.05
    # the mixing weight follows the (scaled) log-ratio difference
    log_ratio_modulation = torch.sigmoid(logits / tau)
    logistic_component = -F.logsigmoid(logits)
    exp_component = torch.exp(-logits)
    return logistic_component * (1 - log_ratio_modulation) + exp_component * log_ratio_modulation
