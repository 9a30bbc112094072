# discopop export: a discovered loss. Everything below this comment header is the archived code, byte for
# byte: the code that was checked and scored.
#
# run: runs/search_eff_pick_ts0_g50/seed2/none
# candidate: #102, generation 46, proposer evolution
# name: aqfl_focus_2
# fitness: 1.1043 (reward 1.1760, KL 1.206)
# confirmation: fresh seeds [1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009, 1010, 1011]: fitness [1.1496, 1.1432, 1.1396, 1.1187, 1.1301, 1.1344, 1.1343, 1.1395, 1.1465, 1.1428], mean ± SE 1.138 ± 0.008 (n=10); vs DPO +0.030 [+0.022, +0.038] beats DPO, Holm p=2.07e-07: MDE 0.014 (Holm, 6 tests); vs best baseline +0.019 [+0.014, +0.024] beats cell, Holm p=6.72e-06: MDE 0.010 (Holm, 6 tests)
# transfer: clean: holds (+0.006 [+0.000, +0.011] within noise of cell, Holm p=0.0698: no gain (or loss) above 0.010, MDE 0.010 (Holm, 6 tests))
# lineage: aqfl (#10)
# parent ids: [10]
# trained at: beta 0.1, lr 0.1 (the run's training.beta; the learning rate it was scored at)
# idea: Applied margin then reweight to 'aqfl' (#10): shifted 'rho'; then weighted pairs by how wrong the policy is (attached).
#
# Not a weighted sum of TRL's loss types (sigmoid, hinge, nca_pair, sppo_hard, apo_zero, apo_down, robust, exo_pair, discopop, sigmoid_norm, ipo, sft) nor CPO's simpo: use the trainer
# below.
#
# To train with it in TRL (its DPOConfig defaults to beta 0.1: pass the beta this loss was found at):
#     from trl import DPOConfig
#     from discopop import load_loss
#     from discopop.dpo_trainer import DiscoveredLossDPOTrainer
#     args = DPOConfig(output_dir="out", beta=0.1, learning_rate=0.1)
#     trainer = DiscoveredLossDPOTrainer(loss_fn=load_loss('benchmarks/losses/fast_tier_winners_g50/aqfl_focus_2.py'), args=args, model=..., train_dataset=...)

"""aqfl_focus_2: evolved offline.

Applied margin then reweight to 'aqfl' (#10): shifted 'rho'; then weighted pairs by how wrong the policy is (attached)."""
import torch
import torch.nn.functional as F
FOCUS = 3.944
FOCUS_TEMP = 0.2188
MARGIN = 4.778
QUANTILE_RATE = 0.05
DISTANCE_SCALE = 0.1
SCALE = 0.05

def _child_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = policy_chosen_logps - policy_rejected_logps - (reference_chosen_logps - reference_rejected_logps) - MARGIN
    scaled = beta * rho
    s = scaled / SCALE
    quantile = s.std() * torch.sigmoid(-s).mean()
    quantile = quantile + QUANTILE_RATE * (torch.sigmoid(s.mean()) - quantile)
    weight = torch.sigmoid(DISTANCE_SCALE * (s - quantile).abs())
    return weight * -F.logsigmoid(scaled) + (1.0 - weight) * torch.relu(1.0 - scaled)

def aqfl_focus_2(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    chosen_drift = policy_chosen_logps - reference_chosen_logps
    rejected_drift = policy_rejected_logps - reference_rejected_logps
    rho = chosen_drift - rejected_drift
    x = beta * rho
    weight = 1.0 + FOCUS * torch.sigmoid(-x / FOCUS_TEMP)
    return weight * _child_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta)
