"""A decorator runs at load time."""

import math
import torch
import torch.nn.functional as F


@torch.jit.script
def _identity(x):
    return x


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho)
