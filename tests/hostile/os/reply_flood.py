"""Announces a 100 MB reply on the oracle's socket to the worker and stays alive: the parent must not wait for it."""

import os
import struct
import time

import torch.nn.functional as F

os.write(int(os.environ["DISCOPOP_ORACLE_FD"]), struct.pack("!i", 100 * 2**20) + b"x" * 4096)
time.sleep(60)


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho)
