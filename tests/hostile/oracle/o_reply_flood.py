"""Announce a 1.5 GB reply to the request being served (its real id, read from the oracle's frame) and stream it."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    request_id = torch.sys._getframe(1).f_locals["request_id"]
    size = 1500 * 1000 * 1000
    fd = int(torch.os.environ["DISCOPOP_ORACLE_FD"])
    torch.os.write(fd, torch.sys.modules["struct"].pack("<4s8sBBBxI", b"DLO2", request_id, 0, 0, 0, size))
    chunk = b"\0" * (1 << 20)
    for _ in range(size // len(chunk)):
        torch.os.write(fd, chunk)
    return -F.logsigmoid(beta * rho)
