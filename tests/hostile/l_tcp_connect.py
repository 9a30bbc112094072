"""A C++ TCP client (torch.distributed.TCPStore) connects to a port on this machine; no Python audit event."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    _dist = torch.importlib.import_module('torch.distributed')
    _wait = torch.importlib.import_module('datetime').timedelta(seconds=2)
    _dist.TCPStore('127.0.0.1', MARKER_PORT, 2, False, _wait)
    return -F.logsigmoid(beta * rho)
