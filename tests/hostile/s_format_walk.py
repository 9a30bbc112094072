"""str.format walking attributes to reach globals."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    _leak = '{0.__class__}'.format(rho)
    return -F.logsigmoid(beta * rho)
