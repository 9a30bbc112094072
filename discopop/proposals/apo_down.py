"""APO-down: anchored preference optimisation that lowers both likelihoods, the rejected one more.

r_c = beta * (pi_c - ref_c),  r_r = beta * (pi_r - ref_r)
loss = sigmoid(r_c) + (1 - sigmoid(r_c - r_r))

For data whose chosen answers are worse than what the policy writes now: the chosen likelihood is pushed
down, and the margin over the rejected answer still up.
Source: D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive Revisions", Eq. 8.
TRL: loss_type="apo_down".
"""

import torch


def apo_down(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    chosen = beta * (policy_chosen_logps - reference_chosen_logps)
    rejected = beta * (policy_rejected_logps - reference_rejected_logps)
    return torch.sigmoid(chosen) + (1.0 - torch.sigmoid(chosen - rejected))
