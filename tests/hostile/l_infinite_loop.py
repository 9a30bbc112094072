"""A Python loop that never ends in practice."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    for _ in range(10 ** 12):
        rho = rho + 0.0
    return -F.logsigmoid(beta * rho)
