"""Reach raw memory through a tensor's untyped storage."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    _raw = rho.untyped_storage()
    return -F.logsigmoid(beta * rho)
