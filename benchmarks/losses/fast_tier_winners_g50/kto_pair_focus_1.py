# discopop export: a discovered loss. Everything below this comment header is the archived code, byte for
# byte: the code that was checked and scored.
#
# run: runs/search_eff_pick_ts0_g50/seed1/none
# candidate: #36, generation 13, proposer evolution
# name: kto_pair_focus_1
# fitness: 1.0652 (reward 1.1619, KL 1.394)
# confirmation: fresh seeds [1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009, 1010]: fitness [1.1351, 1.1520, 1.1398, 1.1428, 1.1143, 1.1305, 1.1349, 1.1405, 1.1443, 1.1321], mean ± SE 1.137 ± 0.009 (n=10); vs DPO +0.015 [+0.009, +0.022] beats DPO, Holm p=0.000225: MDE 0.011 (Holm, 3 tests); vs best baseline DPO is the strongest baseline
# transfer: clean: holds (-0.004 [-0.010, +0.002] within noise of cell, Holm p=0.191: no gain (or loss) above 0.009, MDE 0.011 (Holm, 6 tests))
# lineage: kto_pair (#4)
# parent ids: [4]
# trained at: beta 0.1, lr 0.1 (the run's training.beta; the learning rate it was scored at)
# idea: Applied reweight to 'kto_pair' (#4): weighted pairs by how wrong the policy is (attached).
#
# Not a weighted sum of TRL's loss types (sigmoid, hinge, nca_pair, sppo_hard, apo_zero, apo_down, robust, exo_pair, discopop, sigmoid_norm, ipo, sft) nor CPO's simpo: use the trainer
# below.
#
# To train with it in TRL (its DPOConfig defaults to beta 0.1: pass the beta this loss was found at):
#     from trl import DPOConfig
#     from discopop import load_loss
#     from discopop.dpo_trainer import DiscoveredLossDPOTrainer
#     args = DPOConfig(output_dir="out", beta=0.1, learning_rate=0.1)
#     trainer = DiscoveredLossDPOTrainer(loss_fn=load_loss('benchmarks/losses/fast_tier_winners_g50/kto_pair_focus_1.py'), args=args, model=..., train_dataset=...)

"""kto_pair_focus_1: evolved offline.

Applied reweight to 'kto_pair' (#4): weighted pairs by how wrong the policy is (attached)."""
import torch
FOCUS = 6.089
FOCUS_TEMP = 0.2338

def _kto_pair_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    chosen_ratio = policy_chosen_logps - reference_chosen_logps
    rejected_ratio = policy_rejected_logps - reference_rejected_logps
    chosen_kl = chosen_ratio.mean().clamp(min=0)
    rejected_kl = rejected_ratio.mean().clamp(min=0)
    chosen_term = 1.0 - torch.sigmoid(beta * (chosen_ratio - rejected_kl))
    rejected_term = 1.0 - torch.sigmoid(beta * (chosen_kl - rejected_ratio))
    return chosen_term + rejected_term

def kto_pair_focus_1(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    chosen_drift = policy_chosen_logps - reference_chosen_logps
    rejected_drift = policy_rejected_logps - reference_rejected_logps
    rho = chosen_drift - rejected_drift
    x = beta * rho
    weight = 1.0 + FOCUS * torch.sigmoid(-x / FOCUS_TEMP)
    return weight * _kto_pair_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta)
