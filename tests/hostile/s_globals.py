"""Reach the builtins through a function's __globals__."""

import math
import torch
import torch.nn.functional as F


def _helper(x):
    return x


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    _b = _helper.__globals__
    return -F.logsigmoid(beta * rho)
