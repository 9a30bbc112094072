"""AOT, unpaired form: the batch's sorted chosen log-ratios against its sorted rejected log-ratios.

c = sort(pi_c - ref_c),  r = sort(pi_r - ref_r)  (each sorted over the batch, ascending)
d = beta * (c - r),  loss_k = -(1 - eps) * log sigmoid(d_k) - eps * log sigmoid(-d_k),  eps = 0
(eps: cDPO-style label smoothing; a run on a task with a known flip rate sets it to that rate).

Asks the distribution of chosen rewards to dominate that of rejected rewards, quantile by quantile,
without using which rejected answer was paired with which chosen one. A batch-level loss like aot.py:
entry k of the output is the k-th quantile's term; only the batch mean is a loss.
Source: Melnyk et al. 2024, "Distributional Preference Alignment of LLMs via Optimal Transport".
TRL: loss_type="aot_unpaired" with label_smoothing = eps.
"""

import torch
import torch.nn.functional as F

LABEL_SMOOTHING = 0.0


def aot_unpaired(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    chosen, _ = torch.sort(policy_chosen_logps - reference_chosen_logps, dim=0)
    rejected, _ = torch.sort(policy_rejected_logps - reference_rejected_logps, dim=0)
    scaled = beta * (chosen - rejected)
    return -(1.0 - LABEL_SMOOTHING) * F.logsigmoid(scaled) - LABEL_SMOOTHING * F.logsigmoid(-scaled)
