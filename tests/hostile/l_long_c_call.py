"""One matrix product that runs for a minute inside C (SIGALRM could not stop it)."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    _a = torch.ones(12000, 12000)
    _b = torch.mm(_a, _a)
    return -F.logsigmoid(beta * rho)
