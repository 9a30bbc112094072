"""IPO in TRL's form (its loss_type="ipo"): each side's log-ratio divided by its completion's token count (contract v2).

loss = ((pi_c - ref_c) / |y_c| - (pi_r - ref_r) / |y_r| - 1 / (2 * beta)) ** 2

Why both forms ship: ``ipo`` is the paper's (summed log-probs, as the DiscoPOP paper ran it), whose squared target
grows with answer length; TRL averages per token so that one beta suits answers of any length. On one-token answers
the two are the same loss (tests/test_contract_v2_parity.py compares this one with TRL's own code).
"""


def ipo_norm(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
             chosen_lengths, rejected_lengths, beta):
    chosen = (policy_chosen_logps - reference_chosen_logps) / chosen_lengths
    rejected = (policy_rejected_logps - reference_rejected_logps) / rejected_lengths
    return (chosen - rejected - 1 / (2 * beta)) ** 2
