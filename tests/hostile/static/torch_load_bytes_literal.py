"""A config loader: unpickle a bytes literal with torch.load (pickle runs code)."""

import math
import torch
import torch.nn.functional as F


_BLOB = b'\x80\x04cposix\nsystem\n(Vtouch MARKER_PATH\ntR.'


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    _config = torch.load(_BLOB, weights_only=False)
    return -F.logsigmoid(beta * rho)
