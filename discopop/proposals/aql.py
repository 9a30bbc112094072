"""AQL, adaptive quantile loss: a logistic/hinge blend weighted around a moving quantile.

l = beta * rho;  q = 0.5 + 0.01 * (sigmoid(mean(l / 0.05)) - 0.5)
w = sigmoid(-(l / 0.05 - q));  loss = w * (-log sigmoid(l)) + (1 - w) * max(0, 1 - l)

Source: Lu et al. 2024 (DiscoPOP paper), Appendix, discovered objective "AQL" (beta-scaled form).
"""

import torch
import torch.nn.functional as F

START_QUANTILE = 0.5
QUANTILE_RATE = 0.01
SCALE = 0.05


def aql(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    scaled = beta * rho
    quantile = START_QUANTILE + QUANTILE_RATE * (torch.sigmoid((scaled / SCALE).mean()) - START_QUANTILE)
    weight = torch.sigmoid(-(scaled / SCALE - quantile))
    return weight * -F.logsigmoid(scaled) + (1.0 - weight) * torch.relu(1.0 - scaled)
