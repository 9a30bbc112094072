"""Is the embedded task useful? Reference vs DPO vs a deliberately bad loss, over seeds.

Prints the SFT reference's held-out reward, then mean ± std of fitness over seeds for DPO,
negated DPO, LRML and IPO, and the DPO-vs-bad gap in units of DPO's seed std (must be >= 5).

    python benchmarks/task_calibration.py --seeds 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from discopop.config import compose
from discopop.losses import load_loss
from discopop.tasks import load_task
from discopop.training import FineTuner

NEGATED_DPO = """
import torch.nn.functional as F

def negated_dpo(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return F.logsigmoid(beta * rho)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg, _ = compose(["wandb.mode=disabled", *args.overrides])
    task = load_task(cfg["task"])
    print(f"task {task.name}: SFT reference held-out reward {task.meta['sft_heldout_reward']:.3f}, "
          f"build {task.meta['build_seconds']} s")
    tuner = FineTuner(task, cfg["training"], Path(tempfile.mkdtemp()))
    losses = {"dpo": load_loss("proposals/dpo.py"), "negated_dpo": load_loss(NEGATED_DPO),
              "lrml": load_loss("proposals/lrml.py"), "ipo": load_loss("proposals/ipo.py")}
    stats = {}
    for name, fn in losses.items():
        values = [tuner.run(fn, seed).score.fitness for seed in range(args.seeds)]
        stats[name] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        print(f"{name:12s} fitness {stats[name][0]:.3f} ± {stats[name][1]:.3f}  ({args.seeds} seeds)")
    gap = stats["dpo"][0] - stats["negated_dpo"][0]
    print(f"DPO - negated DPO = {gap:.3f} = {gap / max(stats['dpo'][1], 1e-9):.0f}x DPO's seed std")


if __name__ == "__main__":
    main()
