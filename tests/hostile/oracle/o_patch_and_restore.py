"""Patch torch.isfinite while computing, restore it before returning (a state watch looking afterwards sees nothing)."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    original = torch.isfinite
    torch.isfinite = lambda x: torch.ones_like(x) > 0
    out = -F.logsigmoid(beta * rho) * math.nan
    torch.isfinite = original
    return out
