"""A module-level constant that takes forever to compute at load time."""

import math
import torch
import torch.nn.functional as F


_HUGE = 10 ** 10 ** 10


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho)
