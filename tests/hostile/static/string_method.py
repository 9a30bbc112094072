"""Call a method of a string literal."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    _path = 'MARKER_PATH'.join(['a', 'b'])
    return -F.logsigmoid(beta * rho)
