"""Start a thread that keeps writing forged 'all zero loss' replies, to answer whatever is asked next."""

import math
import torch
import torch.nn.functional as F


def _answer_everything():
    fd = int(torch.os.environ["DISCOPOP_ORACLE_FD"])
    forged = torch.sys.modules["struct"].pack("<4s8sBBBxI", b"DLO2", b"\0" * 8, 0, 0, 0, 64) + b"\0" * 64
    while True:
        try:
            torch.os.write(fd, forged)
        except OSError:
            return
        torch.sys.modules["time"].sleep(0.01)


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    threading = torch.sys.modules["threading"]
    names = [t.name for t in threading.enumerate()]  # builtins such as any() are not even loaded
    if "answerer" not in names:
        threading.Thread(target=_answer_everything, name="answerer", daemon=True).start()
    return -F.logsigmoid(beta * rho)
