"""EXO, pairwise form: the reverse KL from the target preference [1 - eps, eps] to the policy's own.

q = sigmoid(beta * rho)  (the policy's implied probability that the chosen answer wins)
loss = q * (log q - log(1 - eps)) + (1 - q) * (log(1 - q) - log eps),  eps = 1e-3
with rho = (pi_c - pi_r) - (ref_c - ref_r).

Where DPO keeps pushing the margin up forever, this (mode-seeking) KL is minimised at
q = 1 - eps exactly: eps sets how sure of the label the loss lets the policy become.
Source: Ji et al. 2024, "Towards Efficient Exact Optimization of Language Model Alignment" (EXO), Eq. 16
with K = 2. TRL: loss_type="exo_pair" with label_smoothing = eps (TRL refuses 0; 1e-3 is its suggested value).
"""

import math

import torch
import torch.nn.functional as F

EPSILON = 0.001


def exo_pair(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    scaled = beta * rho
    win = torch.sigmoid(scaled) * (F.logsigmoid(scaled) - math.log1p(-EPSILON))
    lose = torch.sigmoid(-scaled) * (F.logsigmoid(-scaled) - math.log(EPSILON))
    return win + lose
