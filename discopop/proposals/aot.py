"""AOT, paired form: DPO on the batch's sorted policy margins against its sorted reference margins.

m = sort(pi_c - pi_r),  m_ref = sort(ref_c - ref_r)  (each sorted over the batch, ascending)
d = beta * (m - m_ref),  loss_k = -(1 - eps) * log sigmoid(d_k) - eps * log sigmoid(-d_k),  eps = 0
(eps: cDPO-style label smoothing; a run on a task with a known flip rate sets it to that rate).

Matching quantiles instead of pairs asks the policy's margin distribution to dominate the reference's
(first-order stochastic dominance, via one-dimensional optimal transport). A batch-level loss: entry k of
the output is the k-th quantile's term, not pair k's; only the batch mean is a loss, which is all the
trainer uses (kto_pair.py's batch KL estimates are batch-level the same way).
Source: Melnyk et al. 2024, "Distributional Preference Alignment of LLMs via Optimal Transport".
TRL: loss_type="aot" with label_smoothing = eps.
"""

import torch
import torch.nn.functional as F

LABEL_SMOOTHING = 0.0


def aot(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    margins, _ = torch.sort(policy_chosen_logps - policy_rejected_logps, dim=0)
    reference_margins, _ = torch.sort(reference_chosen_logps - reference_rejected_logps, dim=0)
    scaled = beta * (margins - reference_margins)
    return -(1.0 - LABEL_SMOOTHING) * F.logsigmoid(scaled) - LABEL_SMOOTHING * F.logsigmoid(-scaled)
