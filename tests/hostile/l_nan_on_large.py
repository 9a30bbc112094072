"""Fine on small inputs; exp overflows to inf/inf = NaN on large log-ratios."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    _w = torch.exp(-rho)
    return _w / (1 + _w)
