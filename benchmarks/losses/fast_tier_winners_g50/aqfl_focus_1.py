# discopop export: a discovered loss. Everything below this comment header is the archived code, byte for
# byte: the code that was checked and scored.
#
# run: runs/search_eff_pick_ts0_g50/seed0/none
# candidate: #15, generation 2, proposer evolution
# name: aqfl_focus_1
# fitness: 1.1071 (reward 1.1816, KL 1.198)
# confirmation: fresh seeds [1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009]: fitness [1.1466, 1.1324, 1.1478, 1.1401, 1.1445, 1.1129, 1.1339, 1.1397, 1.1304, 1.1267], mean ± SE 1.135 ± 0.008 (n=10); vs DPO +0.028 [+0.018, +0.038] beats DPO, Holm p=3.02e-05: MDE 0.018 (Holm, 6 tests); vs best baseline +0.017 [+0.014, +0.020] beats cell, Holm p=3.07e-09: MDE 0.005 (Holm, 6 tests)
# transfer: clean: transfers (+0.009 [+0.005, +0.012] beats cell, Holm p=0.000348: MDE 0.006 (Holm, 6 tests))
# lineage: aqfl (#10)
# parent ids: [10]
# trained at: beta 0.1, lr 0.1 (the run's training.beta; the learning rate it was scored at)
# idea: Applied reweight then reweight to 'aqfl' (#10): weighted pairs by how wrong the policy is (attached); then weighted pairs by how wrong the policy is (attached).
#
# Not a weighted sum of TRL's loss types (sigmoid, hinge, nca_pair, sppo_hard, apo_zero, apo_down, robust, exo_pair, discopop, sigmoid_norm, ipo, sft) nor CPO's simpo: use the trainer
# below.
#
# To train with it in TRL (its DPOConfig defaults to beta 0.1: pass the beta this loss was found at):
#     from trl import DPOConfig
#     from discopop import load_loss
#     from discopop.dpo_trainer import DiscoveredLossDPOTrainer
#     args = DPOConfig(output_dir="out", beta=0.1, learning_rate=0.1)
#     trainer = DiscoveredLossDPOTrainer(loss_fn=load_loss('benchmarks/losses/fast_tier_winners_g50/aqfl_focus_1.py'), args=args, model=..., train_dataset=...)

"""aqfl_focus_1: evolved offline.

Applied reweight then reweight to 'aqfl' (#10): weighted pairs by how wrong the policy is (attached); then weighted pairs by how wrong the policy is (attached)."""
import torch
import torch.nn.functional as F
FOCUS_2 = 0.8644
FOCUS_TEMP_2 = 1.043
FOCUS = 4.889
FOCUS_TEMP = 0.4436
QUANTILE_RATE = 0.05
DISTANCE_SCALE = 0.1
SCALE = 0.05

def _aqfl_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = policy_chosen_logps - policy_rejected_logps - (reference_chosen_logps - reference_rejected_logps)
    scaled = beta * rho
    s = scaled / SCALE
    quantile = s.std() * torch.sigmoid(-s).mean()
    quantile = quantile + QUANTILE_RATE * (torch.sigmoid(s.mean()) - quantile)
    weight = torch.sigmoid(DISTANCE_SCALE * (s - quantile).abs())
    return weight * -F.logsigmoid(scaled) + (1.0 - weight) * torch.relu(1.0 - scaled)

def _child_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    chosen_drift = policy_chosen_logps - reference_chosen_logps
    rejected_drift = policy_rejected_logps - reference_rejected_logps
    rho = chosen_drift - rejected_drift
    x = beta * rho
    weight = 1.0 + FOCUS * torch.sigmoid(-x / FOCUS_TEMP)
    return weight * _aqfl_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta)

def aqfl_focus_1(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    chosen_drift = policy_chosen_logps - reference_chosen_logps
    rejected_drift = policy_rejected_logps - reference_rejected_logps
    rho = chosen_drift - rejected_drift
    x = beta * rho
    weight = 1.0 + FOCUS_2 * torch.sigmoid(-x / FOCUS_TEMP_2)
    return weight * _child_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta)
