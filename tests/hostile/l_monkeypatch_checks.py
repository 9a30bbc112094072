"""Monkeypatch torch.isfinite / torch.equal and loosen discopop.contract.checks.TOL so a NaN loss passes."""

import math
import torch
import torch.nn.functional as F


def _all_true(x):
    return torch.ones_like(x) > 0


def _same(a, b):
    return True


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    _g = torch.builtins.getattr
    torch.isfinite = _all_true
    torch.equal = _same
    _g(torch.sys, 'mod' + 'ules')['discopop.contract.checks'].TOL = 1e30
    return rho * math.nan
