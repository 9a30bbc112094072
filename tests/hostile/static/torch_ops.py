"""Call an operator through the torch.ops registry."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    rho = torch.ops.aten.exp(rho)
    return -F.logsigmoid(beta * rho)
