"""Connects to a pathname and an abstract unix socket the test listens on, to hand over the environment."""

import os
import socket

import torch.nn.functional as F

_seen = []
for _label, _address in (("pathname", "MARKER_SOCKET"), ("abstract", "\0MARKER_NAME")):
    try:
        _sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        _sock.connect(_address)
        _sock.sendall(repr(dict(os.environ)).encode())
        _seen.append(f"{_label}=sent")
    except OSError as _err:
        _seen.append(f"{_label}={type(_err).__name__}")
raise RuntimeError("unix sockets: " + " ".join(_seen))


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho)
