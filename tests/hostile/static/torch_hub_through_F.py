"""Reach torch.hub through the torch module that F itself imports."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    _model = F.torch.hub.load('MARKER_PATH', 'model', source='local')
    return -F.logsigmoid(beta * rho)
