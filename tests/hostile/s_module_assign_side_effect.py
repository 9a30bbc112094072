"""Module-level assignment that opens a file at import time."""

import torch

_HANDLE = open('MARKER_PATH', 'w')


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    return policy_chosen_logps - policy_rejected_logps
