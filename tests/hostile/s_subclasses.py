"""Reach os.system through object.__subclasses__()."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    _classes = ().__class__.__base__.__subclasses__()
    return -F.logsigmoid(beta * rho)
