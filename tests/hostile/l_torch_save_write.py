"""torch.save fetched with getattr: its C++ writer opens the file without any Python audit event."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    _g = torch.builtins.getattr
    _g(torch, 'sa' + 've')(rho, 'MARKER_PATH')
    return -F.logsigmoid(beta * rho)
