# discopop export: a discovered loss. Everything below this comment header is the archived code, byte for
# byte: the code that was checked and scored.
#
# run: runs/search_eff_equal/seed3/none (python benchmarks/search_efficiency.py, docs/results.md §0)
# candidate: #32, generation 0, proposer reference
# name: dbaql_temperature_0_3
# fitness: 0.9122 (reward 0.9137, KL 0.163)
# confirmation: fresh seeds [1003, 1004, 1005, 1006, 1007]: fitness [1.0137, 0.9999, 0.9792, 1.0227, 0.9935], mean ± SE 1.002 ± 0.043 (n=5)
# transfer: not confirmed on held-out task variants
# lineage: none (first generation)
# parent ids: []
# trained at: beta 0.05, lr 0.003 (the beta its search chose; the learning rate it was scored at)
# check it at that beta: discopop check dbaql_temperature_0_3.py --beta 0.05
# idea: DBAQL, dynamic blended adaptive quantile loss: logistic/exponential blend set by batch variability.
#
# Whether TRL's own loss options reproduce it was not recorded for this run (`discopop check` says).
#
# To train with it in TRL (its DPOConfig defaults to beta 0.1: pass the beta this loss was found at):
#     from trl import DPOConfig
#     from discopop import load_loss
#     from discopop.dpo_trainer import DiscoveredLossDPOTrainer
#     args = DPOConfig(output_dir="out", beta=0.05, learning_rate=0.003)
#     trainer = DiscoveredLossDPOTrainer(loss_fn=load_loss("dbaql_temperature_0_3.py'"), args=args, model=..., train_dataset=...)

"""DBAQL, dynamic blended adaptive quantile loss: logistic/exponential blend set by batch variability.

l = beta * rho;  c = sigmoid(var(l / 0.05));  loss = c * (-log sigmoid(l / 0.9)) + (1 - c) * exp(-0.9 * l)

Source: Lu et al. 2024 (DiscoPOP paper), Appendix, discovered objective "DBAQL" (beta-scaled form).
"""

import torch
import torch.nn.functional as F

TEMPERATURE = 0.3  # tuned
SCALE = 0.05


def dbaql(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    scaled = beta * rho
    blend = torch.sigmoid((scaled / SCALE).var())
    return blend * -F.logsigmoid(scaled / TEMPERATURE) + (1.0 - blend) * torch.exp(-scaled * TEMPERATURE)
