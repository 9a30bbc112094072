"""Starts programs and processes every way Python offers; each would leave a file outside the sandbox.

``subprocess.Popen`` runs ``_posixsubprocess.fork_exec`` (no audit event of its own); the others
are ``os.fork``, ``os.posix_spawn`` and ``os.execv`` (which would replace the worker itself).
"""

import os
import subprocess

import torch.nn.functional as F

_SCRIPT = ["/bin/sh", "-c", "echo spawned > MARKER_PATH; echo spawned > MARKER_DIR/spawned"]


def _fork():
    if os.fork() == 0:
        with open("MARKER_DIR/forked", "w") as fh:
            fh.write("forked")
        os._exit(0)


_seen = []
for _label, _start in (("fork_exec", lambda: subprocess.Popen(_SCRIPT).wait()),
                       ("fork", _fork),
                       ("posix_spawn", lambda: os.waitpid(os.posix_spawn(_SCRIPT[0], _SCRIPT, {}), 0)),
                       ("execv", lambda: os.execv(_SCRIPT[0], _SCRIPT))):
    try:
        _start()
        _seen.append(f"{_label}=started")
    except OSError as _err:
        _seen.append(f"{_label}={type(_err).__name__}")
raise RuntimeError("spawn: " + " ".join(_seen))


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho)
