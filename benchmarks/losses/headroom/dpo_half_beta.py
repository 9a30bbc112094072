"""DPO at half its beta: loss = -log sigmoid(beta * rho / 2). Converges to twice DPO's policy move (the pairs
pipeline's scale 2): a constant change, not a new shape (benchmarks/headroom_scan.py --designed)."""

import torch.nn.functional as F


def dpo_half_beta(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(0.5 * beta * rho)
