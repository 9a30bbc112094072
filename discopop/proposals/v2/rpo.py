"""RPO loss: DPO plus ALPHA times the chosen answers' NLL (contract v2).

loss = -log sigmoid(beta * rho) + ALPHA * NLL,   rho = (pi_c - pi_r) - (ref_c - ref_r),
NLL = the chosen answers' token-mean NLL over the batch (sum of token NLLs / number of tokens).

Source: Pang et al. 2024, "Iterative Reasoning Preference Optimization" (the DPO + NLL objective); TRL's form
of it: DPOConfig(loss_type=["sigmoid", "sft"], loss_weights=[1.0, ALPHA]) (tests/test_contract_v2_parity.py).
"""

import torch
import torch.nn.functional as F

ALPHA = 1.0


def rpo(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
        chosen_lengths, chosen_nll, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    nll = (chosen_nll * chosen_lengths).sum() / chosen_lengths.sum()
    return -F.logsigmoid(beta * rho) + ALPHA * nll * torch.ones_like(rho)
