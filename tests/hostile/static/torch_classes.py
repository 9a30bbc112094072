"""Load a custom-class library through torch.classes."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    torch.classes.load_library('MARKER_PATH')
    return -F.logsigmoid(beta * rho)
