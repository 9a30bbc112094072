"""Write a file outside the work dir with open()."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    open('MARKER_PATH', 'w').write('pwned')
    return -F.logsigmoid(beta * rho)
