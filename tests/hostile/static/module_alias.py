"""Rebind a module name so attribute checks on 'torch' are skipped."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    _t = torch
    _t.save(rho, 'MARKER_PATH')
    return -F.logsigmoid(beta * rho)
