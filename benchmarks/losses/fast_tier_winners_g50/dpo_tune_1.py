# discopop export: a discovered loss. Everything below this comment header is the archived code, byte for
# byte: the code that was checked and scored.
#
# run: runs/search_eff_pick_ts0_g50/seed0/feedback
# candidate: #45, generation 17, proposer evolution
# name: dpo_tune_1
# fitness: 1.1054 (reward 1.1852, KL 1.349)
# confirmation: fresh seeds [1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009]: fitness [1.1439, 1.1406, 1.1499, 1.1495, 1.1437, 1.1256, 1.1389, 1.1375, 1.1399, 1.1382], mean ± SE 1.141 ± 0.008 (n=10); vs DPO +0.034 [+0.026, +0.041] beats DPO, Holm p=1.11e-10: MDE 0.013 (Holm, 6 tests); vs best baseline +0.023 [+0.017, +0.028] beats cell, Holm p=2.37e-07: MDE 0.010 (Holm, 6 tests)
# transfer: clean: holds (-0.007 [-0.013, -0.001] within noise of cell, Holm p=0.0538: no gain (or loss) above 0.012, MDE 0.011 (Holm, 6 tests))
# lineage: dpo_piecewise_1 (#36) <- dpo (#1) <- kto_pair_focus_1 (#24) <- kto_pair (#4)
# parent ids: [36]
# trained at: beta 0.1, lr 0.1 (the run's training.beta; the learning rate it was scored at)
# idea: Applied tune to 'dpo_piecewise_1' (#36): retuned its constants.
#
# Not a weighted sum of TRL's loss types (sigmoid, hinge, nca_pair, sppo_hard, apo_zero, apo_down, robust, exo_pair, discopop, sigmoid_norm, ipo, sft) nor CPO's simpo: use the trainer
# below.
#
# To train with it in TRL (its DPOConfig defaults to beta 0.1: pass the beta this loss was found at):
#     from trl import DPOConfig
#     from discopop import load_loss
#     from discopop.dpo_trainer import DiscoveredLossDPOTrainer
#     args = DPOConfig(output_dir="out", beta=0.1, learning_rate=0.1)
#     trainer = DiscoveredLossDPOTrainer(loss_fn=load_loss('benchmarks/losses/fast_tier_winners_g50/dpo_tune_1.py'), args=args, model=..., train_dataset=...)

"""dpo_tune_1: evolved offline.

Applied tune to 'dpo_piecewise_1' (#36): retuned its constants."""
import torch.nn.functional as F
import torch
THRESHOLD = -0.09262
FOCUS = 2.556
FOCUS_TEMP = 0.4023

def _dpo_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = policy_chosen_logps - policy_rejected_logps - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho)

def _kto_pair_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    chosen_ratio = policy_chosen_logps - reference_chosen_logps
    rejected_ratio = policy_rejected_logps - reference_rejected_logps
    chosen_kl = chosen_ratio.mean().clamp(min=0)
    rejected_kl = rejected_ratio.mean().clamp(min=0)
    chosen_term = 1.0 - torch.sigmoid(beta * (chosen_ratio - rejected_kl))
    rejected_term = 1.0 - torch.sigmoid(beta * (chosen_kl - rejected_ratio))
    return chosen_term + rejected_term

def _kto_pair_part_2(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    chosen_drift = policy_chosen_logps - reference_chosen_logps
    rejected_drift = policy_rejected_logps - reference_rejected_logps
    rho = chosen_drift - rejected_drift
    x = beta * rho
    weight = 1.0 + FOCUS * torch.sigmoid(-x / FOCUS_TEMP).detach()
    return weight * _kto_pair_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta)

def dpo_tune_1(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    chosen_drift = policy_chosen_logps - reference_chosen_logps
    rejected_drift = policy_rejected_logps - reference_rejected_logps
    rho = chosen_drift - rejected_drift
    x = beta * rho
    return torch.where(x > THRESHOLD, _kto_pair_part_2(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta), _dpo_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta))
