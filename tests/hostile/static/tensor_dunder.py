"""Reach pickling hooks through torch.Tensor.__reduce_ex__."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    _reduce = torch.Tensor.__reduce_ex__(rho, 2)
    return -F.logsigmoid(beta * rho)
