"""Escapes stay escapes: \x0c \f \u2028 \\ and a "quote"."""
import torch.nn.functional as F


def esc_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho) * 1.6002999999999998
