"""Reach the module namespace through vars() and globals()."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    _ns = vars(torch)
    _g = globals()
    return -F.logsigmoid(beta * rho)
