"""DBAQL, dynamic blended adaptive quantile loss: logistic/exponential blend set by batch variability.

l = beta * rho;  c = sigmoid(var(l / 0.05));  loss = c * (-log sigmoid(l / 0.9)) + (1 - c) * exp(-0.9 * l)

Source: Lu et al. 2024 (DiscoPOP paper), Appendix, discovered objective "DBAQL" (beta-scaled form).
"""

import torch
import torch.nn.functional as F

TEMPERATURE = 0.9
SCALE = 0.05


def dbaql(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    scaled = beta * rho
    blend = torch.sigmoid((scaled / SCALE).var())
    return blend * -F.logsigmoid(scaled / TEMPERATURE) + (1.0 - blend) * torch.exp(-scaled * TEMPERATURE)
