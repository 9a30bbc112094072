# discopop export: a discovered loss. Everything below this comment header is the archived code, byte for
# byte: the code that was checked and scored.
#
# run: runs/search_eff_pick_ts1_g50/seed3/none
# candidate: #66, generation 28, proposer evolution
# name: cell_tune_1
# fitness: 1.0786 (reward 1.1839, KL 1.971)
# confirmation: fresh seeds [1003, 1004, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012]: fitness [1.1169, 1.1295, 1.1082, 1.1228, 1.1038, 1.1275, 1.1273, 1.1024, 1.1288, 1.1160], mean ± SE 1.118 ± 0.009 (n=10); vs DPO +0.009 [+0.004, +0.015] beats DPO, Holm p=0.00273: MDE 0.009 (Holm, 3 tests); vs best baseline DPO is the strongest baseline
# transfer: clean: holds (-0.007 [-0.015, -0.000] within noise of cell, Holm p=0.0827: no gain (or loss) above 0.013, MDE 0.013 (Holm, 6 tests))
# lineage: cell (#7)
# parent ids: [7]
# trained at: beta 0.1, lr 0.1 (the run's training.beta; the learning rate it was scored at)
# idea: Applied sides then mixture then tune to 'cell' (#7): added a relu term on the rejected side's drift alone; then gated sigmoid into a square term by a sigmoid of the scaled margin; then retuned its constants.
#
# Not a weighted sum of TRL's loss types (sigmoid, hinge, nca_pair, sppo_hard, apo_zero, apo_down, robust, exo_pair, discopop, sigmoid_norm, ipo, sft) nor CPO's simpo: use the trainer
# below.
#
# To train with it in TRL (its DPOConfig defaults to beta 0.1: pass the beta this loss was found at):
#     from trl import DPOConfig
#     from discopop import load_loss
#     from discopop.dpo_trainer import DiscoveredLossDPOTrainer
#     args = DPOConfig(output_dir="out", beta=0.1, learning_rate=0.1)
#     trainer = DiscoveredLossDPOTrainer(loss_fn=load_loss('benchmarks/losses/fast_tier_winners_g50/cell_tune_1.py'), args=args, model=..., train_dataset=...)

"""cell_tune_1: evolved offline.

Applied sides then mixture then tune to 'cell' (#7): added a relu term on the rejected side's drift alone; then gated sigmoid into a square term by a sigmoid of the scaled margin; then retuned its constants."""
import torch
TAU = 1.354

def cell_tune_1(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    mix_margin = beta * (policy_chosen_logps - policy_rejected_logps - (reference_chosen_logps - reference_rejected_logps))
    mix_gate = torch.sigmoid(mix_margin / TAU)
    return (1.0 - mix_gate) * (1.0 - torch.sigmoid(mix_margin)) + mix_gate * ((mix_margin - 1.0) ** 2 / 2.947)
