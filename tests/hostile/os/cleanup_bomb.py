"""Fills its work dir with what breaks a naive cleanup: a 1,500-deep directory chain, 480 MB of files,
an unreadable and a read-only directory, and symlinks to a directory outside that must survive."""

import os

import torch.nn.functional as F

_flags = os.O_RDONLY | os.O_DIRECTORY
_fd = os.open(".", _flags)
os.symlink("MARKER_DIR", "outside", dir_fd=_fd)
for _ in range(1500):
    os.mkdir("d", dir_fd=_fd)
    _next = os.open("d", _flags, dir_fd=_fd)
    os.close(_fd)
    _fd = _next
os.symlink("MARKER_DIR", "outside", dir_fd=_fd)
os.close(_fd)
_chunk = b"\xa5" * 2**20
for _name in ("big-1", "big-2"):  # RLIMIT_FSIZE allows 256 MB per file
    with open(_name, "wb") as _fh:
        for _ in range(240):
            _fh.write(_chunk)
for _name, _mode in (("unreadable", 0), ("read-only", 0o500)):
    os.mkdir(_name)
    with open(f"{_name}/file", "w") as _fh:
        _fh.write("x")
    os.chmod(_name, _mode)
raise RuntimeError(f"left behind in {os.getcwd()}")


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho)
