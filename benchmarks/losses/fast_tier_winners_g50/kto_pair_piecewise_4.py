# discopop export: a discovered loss. Everything below this comment header is the archived code, byte for
# byte: the code that was checked and scored.
#
# run: runs/search_eff_pick_ts1_g50/seed3/feedback
# candidate: #66, generation 28, proposer evolution
# name: kto_pair_piecewise_4
# fitness: 1.0836 (reward 1.1891, KL 1.961)
# confirmation: fresh seeds [1003, 1004, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012]: fitness [1.1227, 1.1337, 1.1085, 1.1159, 1.1074, 1.1315, 1.1276, 1.1039, 1.1279, 1.1127], mean ± SE 1.119 ± 0.009 (n=10); vs DPO +0.010 [+0.004, +0.017] beats DPO, Holm p=0.0109: MDE 0.011 (Holm, 3 tests); vs best baseline DPO is the strongest baseline
# transfer: clean: holds (-0.004 [-0.009, +0.002] within noise of cell, Holm p=0.47: no gain (or loss) above 0.008, MDE 0.010 (Holm, 6 tests))
# lineage: kto_pair_tanh_1 (#52) <- aql_schedule_1 (#58) <- kto_pair_piecewise_1 (#27) <- aql_tune_1 (#37) <- kto_pair_square_mix_1 (#15) <- cell_x_kto_1 (#25) <- aql_sigmoid_mix_1 (#31) <- kto_pair (#4) <- cell (#7) <- kto_pair_smoothhinge_mix_1 (#16) <- aql (#9)
# parent ids: [52, 58]
# trained at: beta 0.1, lr 0.1 (the run's training.beta; the learning rate it was scored at)
# idea: Applied piecewise to 'kto_pair_tanh_1' (#52) and 'aql_schedule_1' (#58): kept the parent's shape on one side of beta*rho = -0.06446 and the second parent below.
#
# Not a weighted sum of TRL's loss types (sigmoid, hinge, nca_pair, sppo_hard, apo_zero, apo_down, robust, exo_pair, discopop, sigmoid_norm, ipo, sft) nor CPO's simpo: use the trainer
# below.
#
# To train with it in TRL (its DPOConfig defaults to beta 0.1: pass the beta this loss was found at):
#     from trl import DPOConfig
#     from discopop import load_loss
#     from discopop.dpo_trainer import DiscoveredLossDPOTrainer
#     args = DPOConfig(output_dir="out", beta=0.1, learning_rate=0.1)
#     trainer = DiscoveredLossDPOTrainer(loss_fn=load_loss('benchmarks/losses/fast_tier_winners_g50/kto_pair_piecewise_4.py'), args=args, model=..., train_dataset=...)

"""kto_pair_piecewise_4: evolved offline.

Applied piecewise to 'kto_pair_tanh_1' (#52) and 'aql_schedule_1' (#58): kept the parent's shape on one side of beta*rho = -0.06446 and the second parent below."""
import torch
import torch.nn.functional as F
THRESHOLD_2 = -0.06446
THRESHOLD = 0.3504
TAU = 1.796
MIX = 0.6242
ALPHA = 0.5
TAU_2 = 0.577
TAU_3 = 1.796
REACH = 2.239
TARGET = 1.208
TAU_4 = 1.341
START_QUANTILE = 0.507
QUANTILE_RATE = 0.01
SCALE = 0.05

def _kto_pair_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    mix_margin = beta * (policy_chosen_logps - policy_rejected_logps - (reference_chosen_logps - reference_rejected_logps))
    mix_gate = torch.sigmoid(mix_margin / TAU)
    return (1.0 - mix_gate) * (1.0 - torch.sigmoid(mix_margin)) + mix_gate * ((mix_margin - 1.0) ** 2 / 4.0)

def _cell_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = policy_chosen_logps - policy_rejected_logps - (reference_chosen_logps - reference_rejected_logps)
    return ALPHA * torch.tanh(-beta * rho) + (1.0 - ALPHA) * -F.logsigmoid(beta * rho)

def _kto_pair_part_2(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    mix_margin = beta * (policy_chosen_logps - policy_rejected_logps - (reference_chosen_logps - reference_rejected_logps))
    mix_gate = torch.sigmoid(mix_margin / TAU_3)
    base_loss = (1.0 - mix_gate) * (1.0 - torch.sigmoid(mix_margin)) + mix_gate * ((mix_margin - 1.0) ** 2 / 4.0)
    mix_margin_2 = beta * mix_margin
    mix_gate_2 = torch.sigmoid(mix_margin_2 / TAU_2)
    return (1.0 - mix_gate_2) * base_loss + mix_gate_2 * F.softplus(1.0 - mix_margin_2)

def _cell_part_2(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    return MIX * _cell_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta) + (1.0 - MIX) * _kto_pair_part_2(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta)

def _kto_pair_part_3(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    chosen_drift = policy_chosen_logps - reference_chosen_logps
    rejected_drift = policy_rejected_logps - reference_rejected_logps
    rho = chosen_drift - rejected_drift
    x = beta * rho
    return torch.where(x > THRESHOLD, _kto_pair_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta), _cell_part_2(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta))

def _aql_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = policy_chosen_logps - policy_rejected_logps - (reference_chosen_logps - reference_rejected_logps) - TARGET * torch.exp(torch.clamp(-torch.abs(policy_chosen_logps - policy_rejected_logps - (reference_chosen_logps - reference_rejected_logps)) / REACH, max=30.0))
    scaled = beta * rho
    quantile = START_QUANTILE + QUANTILE_RATE * (torch.sigmoid((scaled / SCALE).mean()) - START_QUANTILE)
    weight = torch.sigmoid(-(scaled / SCALE - quantile))
    base_loss = weight * -F.logsigmoid(scaled) + (1.0 - weight) * torch.relu(1.0 - scaled)
    mix_gate = torch.sigmoid(scaled / TAU_4)
    return (1.0 - mix_gate) * base_loss + mix_gate * (1.0 - torch.sigmoid(scaled))

def kto_pair_piecewise_4(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    chosen_drift = policy_chosen_logps - reference_chosen_logps
    rejected_drift = policy_rejected_logps - reference_rejected_logps
    rho = chosen_drift - rejected_drift
    x = beta * rho
    return torch.where(x > THRESHOLD_2, _kto_pair_part_3(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta), _aql_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta))
