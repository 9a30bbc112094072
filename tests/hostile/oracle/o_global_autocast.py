"""Turn on global CPU autocast (bfloat16) in the oracle and leave it on; the loss itself is DPO."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    torch.set_autocast_enabled("cpu", True)
    torch.set_autocast_dtype("cpu", torch.bfloat16)
    return -F.logsigmoid(beta * rho)
