# discopop export: a discovered loss. Everything below this comment header is the archived code, byte for
# byte: the code that was checked and scored.
#
# run: runs/search_eff_pick_ts0_g50/seed2/feedback
# candidate: #108, generation 49, proposer evolution
# name: kto_pair_exp_1
# fitness: 1.0974 (reward 1.1576, KL 0.988)
# confirmation: fresh seeds [1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009, 1010, 1011]: fitness [1.1357, 1.1403, 1.1456, 1.1191, 1.1237, 1.1426, 1.1329, 1.1289, 1.1417, 1.1374], mean ± SE 1.135 ± 0.008 (n=10); vs DPO +0.027 [+0.018, +0.035] beats DPO, Holm p=8.43e-06: MDE 0.016 (Holm, 6 tests); vs best baseline +0.016 [+0.010, +0.022] beats cell, Holm p=0.000173: MDE 0.011 (Holm, 6 tests)
# transfer: clean: holds (+0.002 [-0.007, +0.012] within noise of cell, Holm p=0.602: no gain (or loss) above 0.010, MDE 0.017 (Holm, 6 tests))
# lineage: kto_pair_softclip_1 (#85) <- kto_pair_schedule_4 (#82) <- kto_pair_piecewise_3 (#66) <- kto_pair_smoothhinge_mix_1 (#63) <- ipo_tanh_mix_1 (#17) <- kto_pair_square_mix_1 (#20) <- ipo (#3) <- kto_pair (#4)
# parent ids: [85]
# trained at: beta 0.1, lr 0.1 (the run's training.beta; the learning rate it was scored at)
# idea: Applied mutate to 'kto_pair_softclip_1' (#85): swapped torch.tanh for exp.
#
# Not a weighted sum of TRL's loss types (sigmoid, hinge, nca_pair, sppo_hard, apo_zero, apo_down, robust, exo_pair, discopop, sigmoid_norm, ipo, sft) nor CPO's simpo: use the trainer
# below.
#
# To train with it in TRL (its DPOConfig defaults to beta 0.1: pass the beta this loss was found at):
#     from trl import DPOConfig
#     from discopop import load_loss
#     from discopop.dpo_trainer import DiscoveredLossDPOTrainer
#     args = DPOConfig(output_dir="out", beta=0.1, learning_rate=0.1)
#     trainer = DiscoveredLossDPOTrainer(loss_fn=load_loss('benchmarks/losses/fast_tier_winners_g50/kto_pair_exp_1.py'), args=args, model=..., train_dataset=...)

"""kto_pair_exp_1: evolved offline.

Applied mutate to 'kto_pair_softclip_1' (#85): swapped torch.tanh for exp."""
import torch
import torch.nn.functional as F
SOFTCLIP = 10.25
REACH = 1.455
TARGET = 1.242
THRESHOLD = 0.3601
TAU_2 = 0.9249
TAU = 1.747

def _kto_pair_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    mix_margin = beta * (policy_chosen_logps - policy_rejected_logps - (reference_chosen_logps - reference_rejected_logps)) - TARGET * torch.exp(torch.clamp(torch.abs(beta * (policy_chosen_logps - policy_rejected_logps - (reference_chosen_logps - reference_rejected_logps))) / REACH, max=30.0))
    mix_margin_2 = beta * mix_margin
    mix_gate_2 = torch.sigmoid(mix_margin_2 / TAU_2)
    return (1.0 - mix_gate_2) * -F.logsigmoid(mix_margin_2) + mix_gate_2 * F.softplus(1.0 - mix_margin_2)

def _ipo_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = SOFTCLIP * torch.tanh((policy_chosen_logps - policy_rejected_logps - (reference_chosen_logps - reference_rejected_logps)) / SOFTCLIP)
    mix_margin = beta * rho
    mix_gate = torch.sigmoid(mix_margin / TAU)
    return (1.0 - mix_gate) * torch.relu(1.0 - mix_margin) + mix_gate * (1.0 - torch.tanh(mix_margin))

def kto_pair_exp_1(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    chosen_drift = policy_chosen_logps - reference_chosen_logps
    rejected_drift = policy_rejected_logps - reference_rejected_logps
    rho = chosen_drift - rejected_drift
    x = beta * rho
    return torch.where(x > THRESHOLD, _kto_pair_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta), _ipo_part(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta))
