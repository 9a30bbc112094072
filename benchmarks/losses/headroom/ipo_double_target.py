"""IPO with twice its target margin: loss = (rho - 1 / beta)^2. A constant change of IPO, not a new shape
(benchmarks/headroom_scan.py --designed)."""


def ipo_double_target(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                      beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return (rho - 1.0 / beta) ** 2
