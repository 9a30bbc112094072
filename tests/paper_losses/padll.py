"""PADLL, performance-adaptive decay logistic loss: DPO, halved on pairs ranked wrongly.

Source: Lu et al. 2024, "Discovering Preference Optimization Algorithms with and for Large Language
Models" (DiscoPOP), written here in the contract form (beta an argument, not self.beta).
"""

import torch.nn.functional as F


def performance_adaptive_decay_logistic_loss(
    policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta
):
    base_decay = 0.9
    mismatch_penalty = 0.5
    pi_logratios = policy_chosen_logps - policy_rejected_logps
    ref_logratios = reference_chosen_logps - reference_rejected_logps
    logits = pi_logratios - ref_logratios
    mismatches = (logits < 0).float()
    adaptive_decay = base_decay * (1 - mismatches * mismatch_penalty)
    return adaptive_decay * -F.logsigmoid(beta * logits)
