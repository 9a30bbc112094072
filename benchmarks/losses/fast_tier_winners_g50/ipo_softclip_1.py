# discopop export: a discovered loss. Everything below this comment header is the archived code, byte for
# byte: the code that was checked and scored.
#
# run: runs/search_eff_pick_ts0_g50/seed3/feedback
# candidate: #108, generation 49, proposer evolution
# name: ipo_softclip_1
# fitness: 1.1169 (reward 1.1976, KL 1.279)
# confirmation: fresh seeds [1003, 1004, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012]: fitness [1.1473, 1.1453, 1.1155, 1.1345, 1.1451, 1.1393, 1.1363, 1.1495, 1.1392, 1.1355], mean ± SE 1.139 ± 0.008 (n=10); vs DPO +0.031 [+0.022, +0.041] beats DPO, Holm p=1.2e-06: MDE 0.017 (Holm, 6 tests); vs best baseline +0.023 [+0.017, +0.029] beats cell, Holm p=7.74e-06: MDE 0.011 (Holm, 6 tests)
# transfer: clean: holds (-0.000 [-0.006, +0.006] within noise of cell, Holm p=1: no gain (or loss) above 0.005, MDE 0.011 (Holm, 6 tests))
# lineage: ipo_margin_1 (#89) <- ipo (#3)
# parent ids: [89]
# trained at: beta 0.1, lr 0.1 (the run's training.beta; the learning rate it was scored at)
# idea: Applied mutate to 'ipo_margin_1' (#89): wrapped the margin 'rho' in a softclip.
#
# Not a weighted sum of TRL's loss types (sigmoid, hinge, nca_pair, sppo_hard, apo_zero, apo_down, robust, exo_pair, discopop, sigmoid_norm, ipo, sft) nor CPO's simpo: use the trainer
# below.
#
# To train with it in TRL (its DPOConfig defaults to beta 0.1: pass the beta this loss was found at):
#     from trl import DPOConfig
#     from discopop import load_loss
#     from discopop.dpo_trainer import DiscoveredLossDPOTrainer
#     args = DPOConfig(output_dir="out", beta=0.1, learning_rate=0.1)
#     trainer = DiscoveredLossDPOTrainer(loss_fn=load_loss('benchmarks/losses/fast_tier_winners_g50/ipo_softclip_1.py'), args=args, model=..., train_dataset=...)

"""ipo_softclip_1: evolved offline.

Applied mutate to 'ipo_margin_1' (#89): wrapped the margin 'rho' in a softclip."""
import torch
SOFTCLIP = 10.64
MARGIN = 3.597

def ipo_softclip_1(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = SOFTCLIP * torch.tanh((policy_chosen_logps - policy_rejected_logps - (reference_chosen_logps - reference_rejected_logps) - MARGIN) / SOFTCLIP)
    return (rho - 1.0 / (2.0 * beta)) ** 2
