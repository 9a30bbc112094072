"""Not an attack: after seccomp a loss may still start threads (torch and OpenMP do) and use a socketpair
(connected AF_UNIX sockets, like a pipe inherited from the parent); the verdict says what worked."""

import socket
import threading

import torch
import torch.nn.functional as F

_results = []
_thread = threading.Thread(target=lambda: _results.append(float(torch.ones(64, 64).sum())))
_thread.start()
_thread.join()
_left, _right = socket.socketpair()
_left.sendall(b"ping")
_results.append(_right.recv(4).decode())
raise RuntimeError(f"threads and pairs: {_results}")


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho)
