"""Writes escape sequences, control characters and a 1 MB line to stdout, then exits: the parent quotes
the output's last line in the error it archives."""

import os
import sys

import torch.nn.functional as F

sys.stdout.write("\x1b]0;owned\x07\x1b[2J" + "B" * 2**20 + "\x1b[31m\x00\x08\u202edone\n")
sys.stdout.flush()
os._exit(5)


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho)
