"""Raise a BaseException that `except Exception` would miss."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    if beta > 0:
        raise BaseException('bye')
    return -F.logsigmoid(beta * rho)
