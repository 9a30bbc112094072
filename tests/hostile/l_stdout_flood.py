"""Writes 64 MB to stdout (print is refused, sys.stdout is reachable as torch.sys.stdout)."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    torch.sys.stdout.write('x' * 64000000)
    return -F.logsigmoid(beta * rho)
