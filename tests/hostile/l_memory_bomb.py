"""Allocate 16 GiB of bytes."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    _blob = b'x' * (1 << 34)
    return -F.logsigmoid(beta * rho)
