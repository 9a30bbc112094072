"""Delete a directory outside the work dir."""

import math
import torch
import torch.nn.functional as F
import shutil


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    shutil.rmtree('MARKER_PATH')
    return -F.logsigmoid(beta * rho)
