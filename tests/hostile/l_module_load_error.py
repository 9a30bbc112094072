"""A module-level expression that passes the static check but fails when the module runs."""

import torch
import torch.nn.functional as F

_SCALE = torch * 2


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(_SCALE * rho)
