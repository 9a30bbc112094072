"""str.format_map walking F.relu.__globals__ to os.environ."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    _leak = '{f.__globals__[torch].os.environ}'.format_map(dict(f=F.relu))
    return -F.logsigmoid(beta * rho)
