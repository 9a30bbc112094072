"""A well-framed OK reply to the real request id whose body is missing (no values at all)."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    request_id = torch.sys._getframe(1).f_locals["request_id"]
    fd = int(torch.os.environ["DISCOPOP_ORACLE_FD"])
    torch.os.write(fd, torch.sys.modules["struct"].pack("<4s8sBBBxI", b"DLO2", request_id, 0, 0, 0, 0))
    torch.sys.modules["time"].sleep(600)
    return -F.logsigmoid(beta * rho)
