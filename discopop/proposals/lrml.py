"""LRML, the log-ratio modulated loss ("DiscoPOP").

l = beta * rho,  w = sigmoid(l / tau),  loss = (1 - w) * (-log sigmoid(l)) + w * exp(-l),  tau = 0.05
with rho = (pi_c - pi_r) - (ref_c - ref_r).

Source: Lu et al. 2024, "Discovering Preference Optimization Algorithms with and for Large
Language Models", Eq. 5, in its corrected beta-scaled form (the modulation sees beta * rho).
TRL: loss_type="discopop" with discopop_tau=0.05.
"""

import torch
import torch.nn.functional as F

TAU = 0.05


def lrml(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    scaled = beta * rho
    weight = torch.sigmoid(scaled / TAU)
    return (1.0 - weight) * -F.logsigmoid(scaled) + weight * torch.exp(-scaled)
