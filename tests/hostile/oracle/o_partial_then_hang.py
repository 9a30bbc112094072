"""Send half a reply header, then hang (a reader without a deadline would wait forever)."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    fd = int(torch.os.environ["DISCOPOP_ORACLE_FD"])
    torch.os.write(fd, b"DLO2\0\0\0")
    torch.sys.modules["time"].sleep(600)
    return -F.logsigmoid(beta * rho)
