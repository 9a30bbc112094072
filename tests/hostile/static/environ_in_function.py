"""Read the sandbox variable inside the loss through math's module dict."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    _env = math.sys.modules
    return -F.logsigmoid(beta * rho)
