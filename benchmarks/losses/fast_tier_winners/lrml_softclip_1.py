# discopop export: a discovered loss. Everything below this comment header is the archived code, byte for
# byte: the code that was checked and scored.
#
# run: runs/search_eff_equal/seed3/none (python benchmarks/search_efficiency.py, docs/results.md §0)
# candidate: #51, generation 8, proposer evolution
# name: lrml_softclip_1
# fitness: 0.9182 (reward 0.9027, KL 0.329)
# confirmation: fresh seeds [1003, 1004, 1005, 1006, 1007]: fitness [1.0921, 1.0450, 1.0472, 1.0859, 1.0393], mean ± SE 1.062 ± 0.042 (n=5); vs DPO +0.088 [+0.056, +0.121] beats DPO, Holm p=4.36e-05: MDE 0.059 (Holm, 6 tests); vs best baseline +0.060 [+0.036, +0.084] beats dbaql_temperature_0_3, Holm p=0.000683: MDE 0.045 (Holm, 6 tests)
# transfer: clean: holds (+0.036 [-0.013, +0.084] within noise of aqfl_distance_scale_0_3, Holm p=0.38: no gain (or loss) above 0.075, MDE 0.092 (Holm, 6 tests))
# lineage: lrml (#5)
# parent ids: [5]
# trained at: beta 0.2, lr 0.01 (the beta its search chose; the learning rate it was scored at)
# check it at that beta: discopop check lrml_softclip_1.py --beta 0.2
# idea: Applied mixture then margin then mutate to 'lrml' (#5): gated logistic into a tanh term by a sigmoid of the scaled margin; then shifted 'rho'; then wrapped the margin 'rho' in a softclip.
#
# Whether TRL's own loss options reproduce it was not recorded for this run (`discopop check` says).
#
# To train with it in TRL (its DPOConfig defaults to beta 0.1: pass the beta this loss was found at):
#     from trl import DPOConfig
#     from discopop import load_loss
#     from discopop.dpo_trainer import DiscoveredLossDPOTrainer
#     args = DPOConfig(output_dir="out", beta=0.2, learning_rate=0.01)
#     trainer = DiscoveredLossDPOTrainer(loss_fn=load_loss("lrml_softclip_1.py'"), args=args, model=..., train_dataset=...)

"""lrml_softclip_1: evolved offline.

Applied mixture then margin then mutate to 'lrml' (#5): gated logistic into a tanh term by a sigmoid of the scaled margin; then shifted 'rho'; then wrapped the margin 'rho' in a softclip."""
import torch
import torch.nn.functional as F
SOFTCLIP = 13.53
MARGIN = 5.65
TAU_2 = 0.1433

def lrml_softclip_1(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = SOFTCLIP * torch.tanh((policy_chosen_logps - policy_rejected_logps - (reference_chosen_logps - reference_rejected_logps) - MARGIN) / SOFTCLIP)
    scaled = beta * rho
    mix_gate = torch.sigmoid(scaled / TAU_2)
    return (1.0 - mix_gate) * -F.logsigmoid(scaled) + mix_gate * (1.0 - torch.tanh(scaled))
