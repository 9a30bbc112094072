"""Sends a reply that is not JSON (then a JSON list) on the oracle's socket to the worker and stays alive."""

import os
import struct
import time

import torch.nn.functional as F

_body = b"\xff\xfe\x00 not json \x1b[2J"
os.write(int(os.environ["DISCOPOP_ORACLE_FD"]), struct.pack("!i", len(_body)) + _body)
time.sleep(60)


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho)
