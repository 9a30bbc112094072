"""Compile and load C++ with torch.utils.cpp_extension."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    _ext = torch.utils.cpp_extension.load_inline('hostile', 'int x;')
    return -F.logsigmoid(beta * rho)
