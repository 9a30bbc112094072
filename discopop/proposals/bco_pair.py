"""BCO, pairwise form: a binary classifier on each answer's reward, chosen = 1 and rejected = 0.

r_c = beta * (pi_c - ref_c),  r_r = beta * (pi_r - ref_r)
loss = -log sigmoid(r_c) - log sigmoid(-r_r)

Source: Jung et al. 2024, "Binary Classifier Optimization for Large Language Model Alignment". TRL 1.16:
loss_type="bco_pair", which is exactly this. The paper (and TRL before 1.x) also shifts both rewards by a
running mean of past batches' rewards (delta); a loss in the contract holds no state between calls, so that
shift cannot be reproduced, and a per-batch mean in its place would match neither the paper nor any TRL
release: it is left out, and this file is TRL 1.16's stateless form.
"""

import torch.nn.functional as F


def bco_pair(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    chosen = beta * (policy_chosen_logps - reference_chosen_logps)
    rejected = beta * (policy_rejected_logps - reference_rejected_logps)
    return -F.logsigmoid(chosen) - F.logsigmoid(-rejected)
