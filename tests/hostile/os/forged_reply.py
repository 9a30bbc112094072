"""Writes its own reply into the oracle's socket to the worker: a 1 MB error full of escape sequences and control
characters (terminal title, screen clear, NUL, backspace, a right-to-left override), then exits."""

import json
import os
import struct

import torch.nn.functional as F

_send_fd = int(os.environ["DISCOPOP_ORACLE_FD"])
_error = "forged \x1b[2J\x1b]0;owned\x07\x1b[31mred\x1b[0m \x00\x08\x7f\u202etxt.exe\u202c " + "A" * 2**20
_body = json.dumps({"ok": False, "stage": "load", "error": _error, "traceback": "\x1b[1m" * 1000}).encode()
os.write(_send_fd, struct.pack("!i", len(_body)) + _body)
os._exit(0)


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho)
