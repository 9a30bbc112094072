"""PFL, policy-focused loss.

l = beta * rho;  loss = -log sigmoid(l) / 2  if pi_c > pi_r  else  2 * max(0, 1 - l)

Pairs the policy already ranks correctly (by raw policy log-probs) get a damped logistic loss,
the others an amplified hinge. Source: Lu et al. 2024 (DiscoPOP paper), Appendix, "PFL".
"""

import torch
import torch.nn.functional as F

FOCUS_SCALE = 2.0


def pfl(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    scaled = beta * rho
    correct = policy_chosen_logps > policy_rejected_logps
    return torch.where(correct, -F.logsigmoid(scaled) / FOCUS_SCALE, torch.relu(1.0 - scaled) * FOCUS_SCALE)
