"""Each call is quick (~0.8 s); the dozen calls of the checks together exceed the limit."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    _acc = 0
    for _i in range(25000000):
        _acc = _acc + 1
    return -F.logsigmoid(beta * rho)
