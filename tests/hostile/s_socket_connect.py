"""Open a TCP connection."""

import math
import torch
import torch.nn.functional as F
import socket


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    socket.create_connection(('127.0.0.1', MARKER_PORT))
    return -F.logsigmoid(beta * rho)
