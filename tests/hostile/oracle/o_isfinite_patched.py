"""Patch torch.isfinite (and torch.equal) in the oracle so a NaN loss would pass checks run there."""

import math
import torch
import torch.nn.functional as F


def _all_true(x):
    return torch.ones_like(x) > 0


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    torch.isfinite = _all_true
    torch.equal = lambda a, b: True
    return rho * math.nan
