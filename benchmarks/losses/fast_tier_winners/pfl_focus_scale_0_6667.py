# discopop export: a discovered loss. Everything below this comment header is the archived code, byte for
# byte: the code that was checked and scored.
#
# run: runs/search_eff_equal/seed0/feedback (python benchmarks/search_efficiency.py, docs/results.md §0)
# candidate: #18, generation 0, proposer reference
# name: pfl_focus_scale_0_6667
# fitness: 0.9843 (reward 0.9733, KL 0.379)
# confirmation: fresh seeds [1000, 1001, 1002, 1003, 1004]: fitness [1.0535, 1.0378, 1.0877, 1.0904, 1.0472], mean ± SE 1.063 ± 0.044 (n=5)
# transfer: not confirmed on held-out task variants
# lineage: none (first generation)
# parent ids: []
# trained at: beta 0.2, lr 0.01 (the beta its search chose; the learning rate it was scored at)
# check it at that beta: discopop check pfl_focus_scale_0_6667.py --beta 0.2
# idea: PFL, policy-focused loss.
#
# Whether TRL's own loss options reproduce it was not recorded for this run (`discopop check` says).
#
# To train with it in TRL (its DPOConfig defaults to beta 0.1: pass the beta this loss was found at):
#     from trl import DPOConfig
#     from discopop import load_loss
#     from discopop.dpo_trainer import DiscoveredLossDPOTrainer
#     args = DPOConfig(output_dir="out", beta=0.2, learning_rate=0.01)
#     trainer = DiscoveredLossDPOTrainer(loss_fn=load_loss("pfl_focus_scale_0_6667.py'"), args=args, model=..., train_dataset=...)

"""PFL, policy-focused loss.

l = beta * rho;  loss = -log sigmoid(l) / 2  if pi_c > pi_r  else  2 * max(0, 1 - l)

Pairs the policy already ranks correctly (by raw policy log-probs) get a damped logistic loss,
the others an amplified hinge. Source: Lu et al. 2024 (DiscoPOP paper), Appendix, "PFL".
"""

import torch
import torch.nn.functional as F

FOCUS_SCALE = 0.6667  # tuned


def pfl(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    scaled = beta * rho
    correct = policy_chosen_logps > policy_rejected_logps
    return torch.where(correct, -F.logsigmoid(scaled) / FOCUS_SCALE, torch.relu(1.0 - scaled) * FOCUS_SCALE)
