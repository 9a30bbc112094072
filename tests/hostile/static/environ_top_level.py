"""Top level that behaves under the sandbox and misbehaves elsewhere."""

import math
import torch
import torch.nn.functional as F


_SANDBOXED = torch.os.environ.get('DISCOPOP_SANDBOX_DIR')


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho)
