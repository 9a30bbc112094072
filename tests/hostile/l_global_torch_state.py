"""Changes threads, default dtype and grad mode through getattr strings."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    _g = torch.builtins.getattr
    _g(torch, 'set_num' + '_threads')(3)
    _g(torch, 'set_default' + '_dtype')(torch.float64)
    _g(torch, 'set_grad' + '_enabled')(False)
    return -F.logsigmoid(beta * rho)
