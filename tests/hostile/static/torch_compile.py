"""Compile a helper with torch.compile."""

import math
import torch
import torch.nn.functional as F


def _identity(x):
    return x


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    rho = torch.compile(_identity)(rho)
    return -F.logsigmoid(beta * rho)
