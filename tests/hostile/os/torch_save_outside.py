"""torch.save to a directory outside the sandbox that the worker can see: its C++ writer has no audit event."""

import torch
import torch.nn.functional as F

try:
    torch.save(torch.zeros(4), "MARKER_DIR/saved.pt")
    _outcome = "written"
except RuntimeError as _err:
    _outcome = "refused " + str(_err).split(".")[0][:120]
raise RuntimeError("torch.save: " + _outcome)


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho)
