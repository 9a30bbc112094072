"""Deserialise through torch.serialization instead of torch.load."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    _obj = torch.serialization.default_restore_location(rho, 'cpu')
    return -F.logsigmoid(beta * rho)
