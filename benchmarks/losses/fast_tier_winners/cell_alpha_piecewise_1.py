# discopop export: a discovered loss. Everything below this comment header is the archived code, byte for
# byte: the code that was checked and scored.
#
# run: runs/search_eff_equal/seed0/feedback (python benchmarks/search_efficiency.py, docs/results.md §0)
# candidate: #88, generation 27, proposer evolution
# name: cell_alpha_piecewise_1
# fitness: 0.9806 (reward 0.9576, KL 0.501)
# confirmation: fresh seeds [1000, 1001, 1002, 1003, 1004]: fitness [1.0574, 1.0581, 1.0855, 1.0695, 1.0613], mean ± SE 1.066 ± 0.045 (n=5); vs DPO +0.016 [-0.004, +0.035] within noise of DPO, Holm p=0.592: no gain (or loss) above 0.031, MDE 0.039 (Holm, 6 tests); vs best baseline +0.003 [-0.017, +0.023] within noise of pfl_focus_scale_0_6667, Holm p=1: no gain (or loss) above 0.018, MDE 0.041 (Holm, 6 tests)
# transfer: clean: holds (+0.001 [-0.020, +0.023] within noise of DPO, Holm p=1: no gain (or loss) above 0.018, MDE 0.037 (Holm, 3 tests))
# lineage: cell_alpha_chosen_weighted_1 (#65) <- cell_alpha_x_dpo_1 (#82) <- cell_alpha_rejected_weighted_2 (#55) <- dpo_rejected_softplus_1 (#56) <- cell_alpha_rejected_weighted_1 (#42) <- dpo_schedule_1 (#54) <- cell_alpha_0_25 (#16) <- dpo_rejected_relu_1 (#40) <- dpo_smoothhinge_mix_1 (#36) <- dpo (#1)
# parent ids: [65, 82]
# trained at: beta 0.2, lr 0.01 (the beta its search chose; the learning rate it was scored at)
# check it at that beta: discopop check cell_alpha_piecewise_1.py --beta 0.2
# idea: Applied piecewise to 'cell_alpha_chosen_weighted_1' (#65) and 'cell_alpha_x_dpo_1' (#82): kept the parent's shape on one side of beta*rho = 0.1939 and the second parent below.
#
# Whether TRL's own loss options reproduce it was not recorded for this run (`discopop check` says).
#
# To train with it in TRL (its DPOConfig defaults to beta 0.1: pass the beta this loss was found at):
#     from trl import DPOConfig
#     from discopop import load_loss
#     from discopop.dpo_trainer import DiscoveredLossDPOTrainer
#     args = DPOConfig(output_dir="out", beta=0.2, learning_rate=0.01)
#     trainer = DiscoveredLossDPOTrainer(loss_fn=load_loss("cell_alpha_piecewise_1.py'"), args=args, model=..., train_dataset=...)

"""cell_alpha_piecewise_1: evolved offline.

Applied piecewise to 'cell_alpha_chosen_weighted_1' (#65) and 'cell_alpha_x_dpo_1' (#82): kept the parent's shape on one side of beta*rho = 0.1939 and the second parent below."""
import torch
import torch.nn.functional as F
THRESHOLD = 0.1939
CHOSEN_WEIGHT = 0.2618
ALPHA = 0.25
MIX = 0.7435
CHOSEN_WEIGHT_2 = 0.2618
ALPHA_2 = 0.25
SIDE_MARGIN_2 = -0.2491
SIDE_WEIGHT_2 = 0.2175
REACH = 0.7749
TARGET = 0.8957
SIDE_MARGIN = -0.2561
SIDE_WEIGHT = 1.768
TAU = 1.565

def _cell_alpha_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = CHOSEN_WEIGHT * (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    return ALPHA * torch.exp(torch.clamp(-beta * rho, max=30.0)) + (1.0 - ALPHA) * -F.logsigmoid(beta * rho)

def _cell_alpha_part_2(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = CHOSEN_WEIGHT_2 * (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    return ALPHA_2 * torch.exp(torch.clamp(-beta * rho, max=30.0)) + (1.0 - ALPHA_2) * -F.logsigmoid(beta * rho)

def _dpo_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = policy_chosen_logps - policy_rejected_logps - (reference_chosen_logps - reference_rejected_logps) - TARGET * torch.tanh(torch.abs(policy_chosen_logps - policy_rejected_logps - (reference_chosen_logps - reference_rejected_logps)) / REACH)
    base_loss = -F.logsigmoid(beta * rho)
    mix_margin = beta * rho
    mix_gate = torch.sigmoid(mix_margin / TAU)
    return (1.0 - mix_gate) * base_loss + mix_gate * F.softplus(1.0 - mix_margin)

def _dpo_part_2(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    chosen_drift = policy_chosen_logps - reference_chosen_logps
    rejected_drift = policy_rejected_logps - reference_rejected_logps
    rho = chosen_drift - rejected_drift
    return _dpo_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta) + SIDE_WEIGHT * torch.relu(beta * rejected_drift - SIDE_MARGIN)

def _dpo_part_3(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    chosen_drift = policy_chosen_logps - reference_chosen_logps
    rejected_drift = policy_rejected_logps - reference_rejected_logps
    rho = chosen_drift - rejected_drift
    return _dpo_part_2(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta) + SIDE_WEIGHT_2 * F.softplus(beta * rejected_drift - SIDE_MARGIN_2)

def _cell_alpha_part_3(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    return MIX * _cell_alpha_part_2(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta) + (1.0 - MIX) * _dpo_part_3(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta)

def cell_alpha_piecewise_1(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    chosen_drift = policy_chosen_logps - reference_chosen_logps
    rejected_drift = policy_rejected_logps - reference_rejected_logps
    rho = chosen_drift - rejected_drift
    x = beta * rho
    return torch.where(x > THRESHOLD, _cell_alpha_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta), _cell_alpha_part_3(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta))
