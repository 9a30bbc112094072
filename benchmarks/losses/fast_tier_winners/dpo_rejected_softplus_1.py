# discopop export: a discovered loss. Everything below this comment header is the archived code, byte for
# byte: the code that was checked and scored.
#
# run: runs/search_eff_equal/seed0/feedback (python benchmarks/search_efficiency.py, docs/results.md §0)
# candidate: #56, generation 11, proposer evolution
# name: dpo_rejected_softplus_1
# fitness: 0.9810 (reward 0.9643, KL 0.377)
# confirmation: fresh seeds [1000, 1001, 1002, 1003, 1004]: fitness [1.0582, 1.0614, 1.0654, 1.0502, 1.0642], mean ± SE 1.060 ± 0.044 (n=5); vs DPO +0.009 [-0.023, +0.041] within noise of DPO, Holm p=1: no gain (or loss) above 0.034, MDE 0.067 (Holm, 6 tests); vs best baseline -0.003 [-0.037, +0.030] within noise of pfl_focus_scale_0_6667, Holm p=1: no gain (or loss) above 0.029, MDE 0.070 (Holm, 6 tests)
# transfer: clean: holds (-0.001 [-0.024, +0.022] within noise of DPO, Holm p=1: no gain (or loss) above 0.019, MDE 0.041 (Holm, 3 tests))
# lineage: dpo_schedule_1 (#54) <- dpo_rejected_relu_1 (#40) <- dpo_smoothhinge_mix_1 (#36) <- dpo (#1)
# parent ids: [54]
# trained at: beta 0.2, lr 0.01 (the beta its search chose; the learning rate it was scored at)
# check it at that beta: discopop check dpo_rejected_softplus_1.py --beta 0.2
# idea: Applied sides to 'dpo_schedule_1' (#54): added a softplus term on the rejected side's drift alone.
#
# Whether TRL's own loss options reproduce it was not recorded for this run (`discopop check` says).
#
# To train with it in TRL (its DPOConfig defaults to beta 0.1: pass the beta this loss was found at):
#     from trl import DPOConfig
#     from discopop import load_loss
#     from discopop.dpo_trainer import DiscoveredLossDPOTrainer
#     args = DPOConfig(output_dir="out", beta=0.2, learning_rate=0.01)
#     trainer = DiscoveredLossDPOTrainer(loss_fn=load_loss("dpo_rejected_softplus_1.py'"), args=args, model=..., train_dataset=...)

"""dpo_rejected_softplus_1: evolved offline.

Applied sides to 'dpo_schedule_1' (#54): added a softplus term on the rejected side's drift alone."""
import torch.nn.functional as F
import torch
SIDE_MARGIN_2 = -0.2491
SIDE_WEIGHT_2 = 0.2175
REACH = 0.7749
TARGET = 0.8957
SIDE_MARGIN = -0.2561
SIDE_WEIGHT = 1.768
TAU = 1.565

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

def dpo_rejected_softplus_1(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    chosen_drift = policy_chosen_logps - reference_chosen_logps
    rejected_drift = policy_rejected_logps - reference_rejected_logps
    rho = chosen_drift - rejected_drift
    return _dpo_part_2(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta) + SIDE_WEIGHT_2 * F.softplus(beta * rejected_drift - SIDE_MARGIN_2)
