"""NCA, pairwise form: each answer's own reward judged against zero, not only the margin between them.

r_c = beta * (pi_c - ref_c),  r_r = beta * (pi_r - ref_r)
loss = -log sigmoid(r_c) - 0.5 * log sigmoid(-r_c) - 0.5 * log sigmoid(-r_r)

DPO only moves the margin, so both likelihoods may fall together; NCA pulls the chosen answer's reward up
in absolute terms (its optimum sits at r_c = log 2, r_r -> -inf).
Source: Chen et al. 2024, "Noise Contrastive Alignment of Language Models with Explicit Rewards", the
pairwise-preference NCA loss. TRL: loss_type="nca_pair".
"""

import torch.nn.functional as F


def nca_pair(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    chosen = beta * (policy_chosen_logps - reference_chosen_logps)
    rejected = beta * (policy_rejected_logps - reference_rejected_logps)
    return -F.logsigmoid(chosen) - 0.5 * F.logsigmoid(-chosen) - 0.5 * F.logsigmoid(-rejected)
