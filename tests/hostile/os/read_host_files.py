"""Reads /etc/shadow, lists the home directory, reads a file the test left outside the sandbox."""

import os

import torch.nn.functional as F

_seen = []
for _label, _read in (("shadow", lambda: open("/etc/shadow").read()),
                      ("home", lambda: os.listdir("/root")),
                      ("host-file", lambda: open("MARKER_DIR/keep").read())):
    try:
        _seen.append(f"{_label}={str(_read())[:40]!r}")
    except OSError as _err:
        _seen.append(f"{_label}={type(_err).__name__}")
raise RuntimeError("reads: " + " ".join(_seen))


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho)
