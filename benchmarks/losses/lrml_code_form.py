"""LRML as the paper's released code writes it: the modulation sees the raw log-ratio difference.

l = beta * rho,  w = sigmoid(rho),  loss = (1 - w) * (-log sigmoid(l)) + w * exp(-l)
with rho = (pi_c - pi_r) - (ref_c - ref_r).

The shipped reference (``discopop/proposals/lrml.py``, TRL's ``loss_type="discopop"``) uses the paper's
Eq. 5 with the beta-scaled modulation sigmoid(beta * rho / tau), tau = 0.05. The two forms differ most at
small beta: here the slope at rho = 0 is (1 - log 2) / 4 - 3 * beta / 4, which changes sign at beta ~ 0.102
(the shipped form's slope, +0.784 * beta, points to the rejected answer at every beta).
Not a shipped reference: ``benchmarks/lrml_forms.py`` and ``tests/test_lrml_shape.py`` compare the forms.
"""

import torch
import torch.nn.functional as F


def lrml_code_form(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                   beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    scaled = beta * rho
    weight = torch.sigmoid(rho)
    return (1.0 - weight) * -F.logsigmoid(scaled) + weight * torch.exp(-scaled)
