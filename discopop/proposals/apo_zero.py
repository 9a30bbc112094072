"""APO-zero: anchored preference optimisation that raises the chosen and lowers the rejected likelihood.

r_c = beta * (pi_c - ref_c),  r_r = beta * (pi_r - ref_r)
loss = (1 - sigmoid(r_c)) + sigmoid(r_r)

For data whose chosen answers are better than what the policy writes now: each side is anchored to the
reference on its own, so the loss asks for a higher chosen likelihood itself, where DPO's margin may grow
while both likelihoods fall.
Source: D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive Revisions", Eq. 7.
TRL: loss_type="apo_zero".
"""

import torch


def apo_zero(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    chosen = beta * (policy_chosen_logps - reference_chosen_logps)
    rejected = beta * (policy_rejected_logps - reference_rejected_logps)
    return (1.0 - torch.sigmoid(chosen)) + torch.sigmoid(rejected)
