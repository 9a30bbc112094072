"""Raw system calls through ctypes: namespaces, mounts, ptrace on its parent, BPF, io_uring, keys."""

import ctypes
import errno
import os

import torch.nn.functional as F

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_CALLS = {  # x86-64 numbers, harmless arguments
    "unshare": (272, 0x10000000), "setns": (308, 0, 0), "mount": (165, 0, 0, 0, 0, 0),
    "ptrace": (101, 16, os.getppid(), 0, 0), "bpf": (321, 0, 0, 0), "io_uring_setup": (425, 1, 0),
    "keyctl": (250, 0, 0), "clone3": (435, 0, 0),
}
_seen = []
for _name, (_nr, *_args) in _CALLS.items():
    _rc = _libc.syscall(ctypes.c_long(_nr), *(ctypes.c_long(a) for a in _args))
    _seen.append(f"{_name}={'ok' if _rc >= 0 else errno.errorcode.get(ctypes.get_errno(), '?')}")
raise RuntimeError("kernel calls: " + " ".join(_seen))


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho)
