"""IPO loss.

loss = (rho - 1 / (2 * beta))^2,  rho = (pi_c - pi_r) - (ref_c - ref_r)

Source: Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
Preferences", Eq. 17 (beta is the paper's tau). Differs on purpose from TRL's loss_type="ipo",
which divides each log-ratio by the completion's token count: a contract loss sees summed
sequence log-probs only, so this is the paper's unnormalised form.
"""


def ipo(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return (rho - 1.0 / (2.0 * beta)) ** 2
