"""Import os through importlib."""

import math
import torch
import torch.nn.functional as F
import importlib


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    importlib.import_module('os').system('touch MARKER_PATH')
    return -F.logsigmoid(beta * rho)
