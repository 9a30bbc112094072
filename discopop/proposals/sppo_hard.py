"""SPPO with hard win probabilities: each answer's log-ratio regressed onto +-1/(2 beta).

loss = (pi_c - ref_c - 1 / (2 * beta))^2 + (pi_r - ref_r + 1 / (2 * beta))^2

Like IPO a squared loss with a finite target, but on each answer's own log-ratio rather than on the margin.
Source: Wu et al. 2024, "Self-Play Preference Optimization for Language Model Alignment", Eq. 4.7 with the
win probability set to 1 for the chosen and 0 for the rejected answer (the paper estimates it with a
preference model; offline pairs only give the hard label). TRL: loss_type="sppo_hard".
"""


def sppo_hard(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    chosen = policy_chosen_logps - reference_chosen_logps
    rejected = policy_rejected_logps - reference_rejected_logps
    return (chosen - 0.5 / beta) ** 2 + (rejected + 0.5 / beta) ** 2
