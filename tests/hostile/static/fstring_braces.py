"""Build format braces with an f-string, past a ban on '{' in string constants."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    _template = f"{'{'}0.__class__{'}'}"
    return -F.logsigmoid(beta * rho)
