"""KTO, paired form (the "kto_pair" loss older TRL releases shipped).

z_c = clamp(mean(pi_c - ref_c), min=0)   z_r = clamp(mean(pi_r - ref_r), min=0)   (batch KL estimates)
loss = (1 - sigmoid(beta * ((pi_c - ref_c) - z_r))) + (1 - sigmoid(beta * (z_c - (pi_r - ref_r))))

Source: Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", in the
paired form of TRL <= 0.9 (the two per-side terms summed per pair, so the output is [batch]).
The KL estimates are batch means, so each example's loss depends on the batch.
"""

import torch


def kto_pair(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    chosen_ratio = policy_chosen_logps - reference_chosen_logps
    rejected_ratio = policy_rejected_logps - reference_rejected_logps
    chosen_kl = chosen_ratio.mean().clamp(min=0)
    rejected_kl = rejected_ratio.mean().clamp(min=0)
    chosen_term = 1.0 - torch.sigmoid(beta * (chosen_ratio - rejected_kl))
    rejected_term = 1.0 - torch.sigmoid(beta * (chosen_kl - rejected_ratio))
    return chosen_term + rejected_term
