"""In-place mutation of an input by item assignment (no add_ in sight)."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    reference_chosen_logps[0] = 0.0
    return -F.logsigmoid(beta * rho)
