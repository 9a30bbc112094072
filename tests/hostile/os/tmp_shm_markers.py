"""Leaves files in /tmp and /dev/shm (100 MB in /dev/shm), and one in the test's own temporary dir."""

import torch.nn.functional as F

_seen = []
for _label, _path, _size in (("tmp", "/tmp/MARKER_NAME", 10), ("shm", "/dev/shm/MARKER_NAME", 10),
                             ("shm-100MB", "/dev/shm/MARKER_NAME-big", 100 * 2**20),
                             ("pytest-tmp", "MARKER_PATH", 10)):
    try:
        with open(_path, "wb") as _fh:
            for _ in range(0, _size, 2**20):
                _fh.write(b"x" * min(_size, 2**20))
        _seen.append(f"{_label}=written")
    except OSError as _err:
        _seen.append(f"{_label}={type(_err).__name__}")
raise RuntimeError("writes: " + " ".join(_seen))


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho)
