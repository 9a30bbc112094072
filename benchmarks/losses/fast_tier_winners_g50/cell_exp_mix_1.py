# discopop export: a discovered loss. Everything below this comment header is the archived code, byte for
# byte: the code that was checked and scored.
#
# run: runs/search_eff_pick_ts1_g50/seed0/feedback
# candidate: #60, generation 25, proposer evolution
# name: cell_exp_mix_1
# fitness: 1.0699 (reward 1.1842, KL 2.005)
# confirmation: fresh seeds [1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009]: fitness [1.1219, 1.1091, 1.1045, 1.1205, 1.1341, 1.1182, 1.1260, 1.1074, 1.1352, 1.1242], mean ± SE 1.120 ± 0.009 (n=10); vs DPO +0.012 [+0.007, +0.016] beats DPO, Holm p=0.000117: MDE 0.008 (Holm, 3 tests); vs best baseline DPO is the strongest baseline
# transfer: clean: holds (-0.002 [-0.005, +0.000] within noise of cell, Holm p=0.0711: no gain (or loss) above 0.004, MDE 0.005 (Holm, 6 tests))
# lineage: cell_piecewise_2 (#37) <- cell_margin_1 (#13) <- kto_pair_x_hinge_1 (#24) <- cell (#7) <- kto_pair_focus_1 (#19) <- hinge (#2) <- kto_pair (#4)
# parent ids: [37]
# trained at: beta 0.1, lr 0.1 (the run's training.beta; the learning rate it was scored at)
# idea: Applied mixture to 'cell_piecewise_2' (#37): gated the parent's loss into a exp term by a sigmoid of the scaled margin.
#
# Not a weighted sum of TRL's loss types (sigmoid, hinge, nca_pair, sppo_hard, apo_zero, apo_down, robust, exo_pair, discopop, sigmoid_norm, ipo, sft) nor CPO's simpo: use the trainer
# below.
#
# To train with it in TRL (its DPOConfig defaults to beta 0.1: pass the beta this loss was found at):
#     from trl import DPOConfig
#     from discopop import load_loss
#     from discopop.dpo_trainer import DiscoveredLossDPOTrainer
#     args = DPOConfig(output_dir="out", beta=0.1, learning_rate=0.1)
#     trainer = DiscoveredLossDPOTrainer(loss_fn=load_loss('benchmarks/losses/fast_tier_winners_g50/cell_exp_mix_1.py'), args=args, model=..., train_dataset=...)

"""cell_exp_mix_1: evolved offline.

Applied mixture to 'cell_piecewise_2' (#37): gated the parent's loss into a exp term by a sigmoid of the scaled margin."""
import torch
import torch.nn.functional as F
TAU = 1.649
THRESHOLD = 0.1227
MARGIN = 1.693
ALPHA = 0.5
MIX = 0.4347
FOCUS = 2.964
FOCUS_TEMP = 0.2831

def _cell_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = policy_chosen_logps - policy_rejected_logps - (reference_chosen_logps - reference_rejected_logps) - MARGIN
    return ALPHA * torch.exp(torch.clamp(-beta * rho, max=30.0)) + (1.0 - ALPHA) * -F.logsigmoid(beta * rho)

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
    weight = 1.0 + FOCUS * torch.sigmoid(-x / FOCUS_TEMP)
    return weight * _kto_pair_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta)

def _hinge_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = policy_chosen_logps - policy_rejected_logps - (reference_chosen_logps - reference_rejected_logps)
    return torch.relu(1.0 - beta * rho)

def _kto_pair_part_3(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    return MIX * _kto_pair_part_2(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta) + (1.0 - MIX) * _hinge_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta)

def cell_exp_mix_1(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    chosen_drift = policy_chosen_logps - reference_chosen_logps
    rejected_drift = policy_rejected_logps - reference_rejected_logps
    rho = chosen_drift - rejected_drift
    x = beta * rho
    base_loss = torch.where(x > THRESHOLD, _kto_pair_part_3(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta), _cell_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta))
    mix_margin = beta * (policy_chosen_logps - policy_rejected_logps - (reference_chosen_logps - reference_rejected_logps))
    mix_gate = torch.sigmoid(mix_margin / TAU)
    return (1.0 - mix_gate) * base_loss + mix_gate * torch.exp(torch.clamp(-torch.clamp(mix_margin, min=-30.0), max=30.0))
