"""Switch the oracle's default dtype to float64 and leave it so (would leak into the next candidate in a warm process)."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    torch.set_default_dtype(torch.float64)
    return -F.logsigmoid(beta * rho)
