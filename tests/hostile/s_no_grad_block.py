"""A with-block that changes grad mode."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    with torch.no_grad():
        rho = rho * 1.0
    return -F.logsigmoid(beta * rho)
