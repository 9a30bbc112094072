"""Walk a generator's frame to its globals and builtins."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    _frame = (x for x in [rho]).gi_frame
    return -F.logsigmoid(beta * rho)
