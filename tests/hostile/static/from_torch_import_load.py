"""Import torch.load under another name."""

import math
import torch
import torch.nn.functional as F

from torch import load as _load

def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    _obj = _load('MARKER_PATH')
    return -F.logsigmoid(beta * rho)
