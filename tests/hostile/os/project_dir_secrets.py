"""Imports a module from a project directory on its import path, then reads the ``.env`` next to it."""

import os

import discopop_os_project
import torch.nn.functional as F

_seen = [f"module={discopop_os_project.VALUE}"]
try:
    _seen.append(f"listed={len(os.listdir('MARKER_PROJECT'))}")
    with open("MARKER_PROJECT/.env") as _fh:
        _seen.append(".env=" + _fh.read())
except OSError as _err:
    _seen.append(f".env={type(_err).__name__}")
raise RuntimeError("project dir: " + " ".join(_seen))


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho)
