"""Load a TorchScript archive with torch.jit.load."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    _module = torch.jit.load('MARKER_PATH')
    return -F.logsigmoid(beta * rho)
