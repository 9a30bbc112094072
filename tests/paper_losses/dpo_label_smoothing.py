"""The sigmoid (DPO) baseline as the paper's trainer writes it, with conservative label smoothing.

Source: Lu et al. 2024, "Discovering Preference Optimization Algorithms with and for Large Language
Models" (DiscoPOP), written here in the contract form (beta an argument, not self.beta).
"""

import torch.nn.functional as F

LABEL_SMOOTHING = 0.0


def sigmoid_loss(
    policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta
):
    pi_logratios = policy_chosen_logps - policy_rejected_logps
    ref_logratios = reference_chosen_logps - reference_rejected_logps
    logits = pi_logratios - ref_logratios
    return (-F.logsigmoid(beta * logits) * (1 - LABEL_SMOOTHING)
            - F.logsigmoid(-beta * logits) * LABEL_SMOOTHING)
