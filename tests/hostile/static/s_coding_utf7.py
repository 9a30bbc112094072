# -*- coding: utf-7 -*-
# read as utf-8 this is a comment; imported, +AAo-open("MARKER_PATH", "w") runs
import torch.nn.functional as F


def dpo(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho)
