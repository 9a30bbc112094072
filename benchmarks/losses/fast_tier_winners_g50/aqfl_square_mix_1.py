# discopop export: a discovered loss. Everything below this comment header is the archived code, byte for
# byte: the code that was checked and scored.
#
# run: runs/search_eff_pick_ts1_g50/seed2/none
# candidate: #22, generation 6, proposer evolution
# name: aqfl_square_mix_1
# fitness: 1.0834 (reward 1.1967, KL 1.976)
# confirmation: fresh seeds [1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009, 1010, 1011]: fitness [1.1013, 1.1210, 1.1346, 1.1136, 1.1236, 1.1056, 1.1339, 1.1259, 1.1093, 1.1366], mean ± SE 1.121 ± 0.009 (n=10); vs DPO +0.012 [+0.007, +0.017] beats DPO, Holm p=7.4e-05: MDE 0.008 (Holm, 3 tests); vs best baseline DPO is the strongest baseline
# transfer: clean: holds (-0.002 [-0.007, +0.003] within noise of cell, Holm p=0.613: no gain (or loss) above 0.006, MDE 0.009 (Holm, 6 tests))
# lineage: aqfl (#10)
# parent ids: [10]
# trained at: beta 0.1, lr 0.1 (the run's training.beta; the learning rate it was scored at)
# idea: Applied mixture to 'aqfl' (#10): gated the parent's loss into a square term by a sigmoid of the scaled margin.
#
# Not a weighted sum of TRL's loss types (sigmoid, hinge, nca_pair, sppo_hard, apo_zero, apo_down, robust, exo_pair, discopop, sigmoid_norm, ipo, sft) nor CPO's simpo: use the trainer
# below.
#
# To train with it in TRL (its DPOConfig defaults to beta 0.1: pass the beta this loss was found at):
#     from trl import DPOConfig
#     from discopop import load_loss
#     from discopop.dpo_trainer import DiscoveredLossDPOTrainer
#     args = DPOConfig(output_dir="out", beta=0.1, learning_rate=0.1)
#     trainer = DiscoveredLossDPOTrainer(loss_fn=load_loss('benchmarks/losses/fast_tier_winners_g50/aqfl_square_mix_1.py'), args=args, model=..., train_dataset=...)

"""aqfl_square_mix_1: evolved offline.

Applied mixture to 'aqfl' (#10): gated the parent's loss into a square term by a sigmoid of the scaled margin."""
import torch
import torch.nn.functional as F
TAU = 1.768
QUANTILE_RATE = 0.05
DISTANCE_SCALE = 0.1
SCALE = 0.05

def aqfl_square_mix_1(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = policy_chosen_logps - policy_rejected_logps - (reference_chosen_logps - reference_rejected_logps)
    scaled = beta * rho
    s = scaled / SCALE
    quantile = s.std() * torch.sigmoid(-s).mean()
    quantile = quantile + QUANTILE_RATE * (torch.sigmoid(s.mean()) - quantile)
    weight = torch.sigmoid(DISTANCE_SCALE * (s - quantile).abs())
    base_loss = weight * -F.logsigmoid(scaled) + (1.0 - weight) * torch.relu(1.0 - scaled)
    mix_gate = torch.sigmoid(scaled / TAU)
    return (1.0 - mix_gate) * base_loss + mix_gate * ((scaled - 1.0) ** 2 / 4.0)
