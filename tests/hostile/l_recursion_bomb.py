"""Unbounded recursion through a private helper."""

import math
import torch
import torch.nn.functional as F


def _deeper(x, n):
    return _deeper(x + 0.0, n + 1)


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    rho = _deeper(rho, 0)
    return -F.logsigmoid(beta * rho)
