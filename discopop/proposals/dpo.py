"""DPO (sigmoid) loss.

loss = -log sigmoid(beta * rho),  rho = (pi_c - pi_r) - (ref_c - ref_r)

Source: Rafailov et al. 2023, "Direct Preference Optimization", Eq. 7. TRL: loss_type="sigmoid".
"""

import torch.nn.functional as F


def dpo(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho)
