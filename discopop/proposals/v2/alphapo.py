"""AlphaPO loss: SimPO with each side's reward reshaped by ALPHA, reference-free (contract v2).

r(y) = (1 - p(y) ** -ALPHA) / ALPHA,  p(y) = exp(pi / |y|)   (pi: summed completion log-prob, |y|: its tokens)
loss = -log sigmoid(beta * (r(y_c) - r(y_r)) - GAMMA)

r is written as -expm1(-ALPHA * pi / |y|) / ALPHA: the same value, without forming p ** -ALPHA (which overflows on
long, unlikely answers). As ALPHA -> 0, r -> pi / |y| and the loss is SimPO; ALPHA > 0 flattens the reward of
unlikely answers, which the paper argues limits likelihood displacement. ALPHA and GAMMA here are starting points
(GAMMA is TRL's simpo_gamma default); the equal tuning budget moves both.

Source: "AlphaPO: Reward Shape Matters for LLM Alignment" (arXiv 2501.03884).
TRL: CPOConfig(loss_type="alphapo", alpha=ALPHA, simpo_gamma=GAMMA) (TRL turns it into loss_type="simpo" with
cpo_alpha=0; tests/test_contract_v2_parity.py compares loss and gradients with CPOTrainer.cpo_loss).
"""

import torch
import torch.nn.functional as F

ALPHA = 0.25
GAMMA = 0.5


def alphapo(policy_chosen_logps, policy_rejected_logps, chosen_lengths, rejected_lengths, beta):
    chosen = -torch.expm1(-ALPHA * policy_chosen_logps / chosen_lengths) / ALPHA
    rejected = -torch.expm1(-ALPHA * policy_rejected_logps / rejected_lengths) / ALPHA
    return -F.logsigmoid(beta * (chosen - rejected) - GAMMA)
