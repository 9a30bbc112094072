"""Compile TorchScript from a string through torch.jit.CompilationUnit."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    _unit = torch.jit.CompilationUnit('def f(x): return x')
    return -F.logsigmoid(beta * rho)
