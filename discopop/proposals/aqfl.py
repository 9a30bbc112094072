"""AQFL, adaptive quantile feedback loss: a logistic/hinge blend driven by distance to a batch quantile.

l = beta * rho,  s = l / 0.05
q = std(s) * mean(sigmoid(-s));  q = q + 0.05 * (sigmoid(mean(s)) - q)
w = sigmoid(0.1 * |s - q|);  loss = w * (-log sigmoid(l)) + (1 - w) * max(0, 1 - l)

Source: Lu et al. 2024 (DiscoPOP paper), Appendix, discovered objective "AQFL" (beta-scaled form).
"""

import torch
import torch.nn.functional as F

QUANTILE_RATE = 0.05
DISTANCE_SCALE = 0.1
SCALE = 0.05


def aqfl(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    scaled = beta * rho
    s = scaled / SCALE
    quantile = s.std() * torch.sigmoid(-s).mean()
    quantile = quantile + QUANTILE_RATE * (torch.sigmoid(s.mean()) - quantile)
    weight = torch.sigmoid(DISTANCE_SCALE * (s - quantile).abs())
    return weight * -F.logsigmoid(scaled) + (1.0 - weight) * torch.relu(1.0 - scaled)
