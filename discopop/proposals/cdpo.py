"""Conservative DPO (cDPO): DPO with label smoothing, for preference labels that are sometimes wrong.

loss = -(1 - eps) * log sigmoid(beta * rho) - eps * log sigmoid(-beta * rho),  eps = 0.1

Each label is trusted with probability 1 - eps, so the loss stops pushing once the implied preference
probability reaches 1 - eps instead of driving the margin to infinity.
Source: Mitchell 2023, "A note on DPO with noisy preferences and relationship to IPO" (eps 0.1 here, a
common setting, not tuned to the task). TRL 1.16's ``sigmoid`` no longer reads ``label_smoothing``; the same
loss is its ``["sigmoid", "robust"]`` sum with weights 2(1-eps) and -(1-2eps) (tests/test_trl_parity_more.py).
"""

import torch.nn.functional as F

LABEL_SMOOTHING = 0.1


def cdpo(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -(1.0 - LABEL_SMOOTHING) * F.logsigmoid(beta * rho) - LABEL_SMOOTHING * F.logsigmoid(-beta * rho)
