"""A call at module level: runs at import time, before any check."""

import torch

torch.save(torch.zeros(1), 'MARKER_PATH')


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    return policy_chosen_logps - policy_rejected_logps
