"""SimPO loss: reference-free, length-normalised, with a target margin (contract v2).

loss = -log sigmoid(beta * (pi_c / |y_c| - pi_r / |y_r|) - GAMMA)

pi_c, pi_r are the summed completion log-probs and |y| the completion token counts, so each side is the
average per-token log-prob. No reference model: the signature takes none, so the trainer computes none.

Source: Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward", Eq. 6.
TRL: CPOTrainer with loss_type="simpo", cpo_alpha=0, simpo_gamma=GAMMA (TRL subtracts gamma / beta inside
the beta product: the same thing; tests/test_contract_v2_parity.py).
"""

import torch.nn.functional as F

GAMMA = 0.5


def simpo(policy_chosen_logps, policy_rejected_logps, chosen_lengths, rejected_lengths, beta):
    margin = policy_chosen_logps / chosen_lengths - policy_rejected_logps / rejected_lengths
    return -F.logsigmoid(beta * margin - GAMMA)
