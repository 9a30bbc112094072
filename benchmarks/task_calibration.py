"""Does the embedded task rank losses fairly? Every reference loss at every grid point, over seeds.

For each loss in ``proposals/`` (plus a deliberately bad one, negated DPO): search fitness at each
learning rate of ``training.lr_grid`` as mean ± std over seeds, the rate the discovery protocol
would choose (best on seed 0, as ``discover`` does), the mean over seeds at that rate, and the
quantiles of |beta*rho| over the last epoch at that rate (is training in the regime where loss
shapes differ, or only at their slope at zero?). Ends with DPO's chosen-rate score next to its
best grid mean (the protocol must not handicap DPO) and the spread between losses in units of
the seed std.

Each loss's line also gives, at its chosen rate, the score the fitness uses (``task.score``), greedy accuracy
and KL. The run ends with how much per-prompt signal each score carries: over every fine-tune it ran
(losses x rates x seeds), the share of held-out prompts whose greedy 0/1 reward ever changes, against the
share whose answer probability moves by more than 0.01 and 0.05 (a prompt that never changes cannot tell
two losses apart in the paired statistics).

    python benchmarks/task_calibration.py --seeds 3
    python benchmarks/task_calibration.py --seeds 3 --losses dpo,ipo,pfl task=sorting
    python benchmarks/task_calibration.py --seeds 2 --losses dpo,aqfl,hinge training.lr_grid=[4e-5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from discopop.config.compose import compose
from discopop.contract.losses import load_loss
from discopop.fitness.training import FineTuner
from discopop.fitness.tuning import LrProtocol
from discopop.proposers.reference import available
from discopop.tasks import load_task

NEGATED_DPO = """
import torch.nn.functional as F

def negated_dpo(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return F.logsigmoid(beta * rho)
"""


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _cell(values: list[float]) -> str:
    mean, std = _mean_std(values)
    return f"{mean:.3f} ± {std:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--losses", default=",".join(available()) + ",negated_dpo")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg, _ = compose(["wandb.mode=disabled", *args.overrides])
    task = load_task(cfg["task"])
    protocol = LrProtocol.from_config(cfg["training"])
    print(f"task {task.name}: SFT reference held-out reward {task.meta['sft_heldout_reward']:.3f}; "
          f"beta {cfg['training']['beta']}, {cfg['training']['epochs']} epochs, lr grid "
          f"{', '.join(f'{lr:g}' for lr in protocol.grid)}; {args.seeds} seeds", flush=True)
    tuner = FineTuner(task, cfg["training"], Path(tempfile.mkdtemp()), kl_coef=float(cfg["task"]["kl_coef"]))
    print(f"fitness = {task.score if task.answer else 'greedy'} score - {cfg['task']['kl_coef']} x KL", flush=True)
    header = " ".join(f"{f'lr {lr:g}':>15s}" for lr in protocol.grid)
    print(f"{'loss':12s} {header} {'chosen':>8s} {'at chosen':>15s} {'|b*rho| q10/50/90':>20s} "
          f"{'score/greedy/KL at chosen':>26s}", flush=True)
    probability: list[list[float]] = []  # per fine-tune: each search prompt's answer probability
    greedy: list[list[float]] = []  # ... and its greedy 0/1 reward
    chosen_scores: dict[str, tuple[float, float]] = {}
    best_means: dict[str, float] = {}
    started = time.perf_counter()
    for name in args.losses.split(","):
        fn = load_loss(NEGATED_DPO if name == "negated_dpo" else Path("proposals") / f"{name}.py")
        runs = {lr: [tuner.run(fn, seed, learning_rate=lr) for seed in range(args.seeds)] for lr in protocol.grid}
        fitness = {lr: [r.score.fitness for r in rs] for lr, rs in runs.items()}
        chosen = max(protocol.grid, key=lambda lr: (fitness[lr][0], -lr))  # seed 0 decides, as in discover
        chosen_scores[name] = _mean_std(fitness[chosen])
        best_means[name] = max(statistics.fmean(v) for v in fitness.values())
        margins = [runs[chosen][0].metrics.get(f"margin_abs_q{q}", float("nan")) for q in (10, 50, 90)]
        cells = " ".join(f"{_cell(fitness[lr]):>15s}" for lr in protocol.grid)
        at = [r.score for r in runs[chosen]]
        terms = (statistics.fmean(s.reward for s in at), statistics.fmean(s.greedy or 0.0 for s in at),
                 statistics.fmean(s.kl for s in at))
        print(f"{name:12s} {cells} {chosen:>8g} {_cell(fitness[chosen]):>15s} "
              f"{'/'.join(f'{m:.2f}' for m in margins):>20s} {'/'.join(f'{t:.3f}' for t in terms):>26s}", flush=True)
        if name != "negated_dpo":
            for r in (r for rs in runs.values() for r in rs):
                greedy.append(r.score.per_prompt_greedy)
                if task.answer is not None and task.score == "probability":
                    probability.append(r.score.per_prompt)
    print(f"({time.perf_counter() - started:.0f} s)")
    if "dpo" in chosen_scores:
        mean, std = chosen_scores["dpo"]
        print(f"DPO at its chosen rate {mean:.3f} ± {std:.3f}; its best grid mean {best_means['dpo']:.3f} "
              f"(gap {best_means['dpo'] - mean:+.3f})")
    _signal(greedy, probability)
    real = {k: v for k, v in chosen_scores.items() if k != "negated_dpo"}
    if len(real) > 1:
        pooled = statistics.fmean(s for _, s in real.values()) or 1e-9
        top, bottom = max(m for m, _ in real.values()), min(m for m, _ in real.values())
        print(f"spread of reference losses at their chosen rates: {top - bottom:.3f} = "
              f"{(top - bottom) / pooled:.0f}x the mean seed std ({pooled:.4f})")


def _signal(greedy: list[list[float]], probability: list[list[float]]) -> None:
    """Per held-out prompt, does its score move between fine-tunes? Constant prompts carry no paired signal."""
    if len(greedy) < 2:
        return
    prompts = len(greedy[0])
    columns = list(zip(*greedy, strict=True))
    always = sum(all(v == 1.0 for v in c) for c in columns) / prompts
    never = sum(all(v == 0.0 for v in c) for c in columns) / prompts
    print(f"over {len(greedy)} fine-tunes, {prompts} search prompts: greedy 0/1 varies on "
          f"{1 - always - never:.1%} (right every time {always:.1%}, never {never:.1%})")
    if len(probability) >= 2:
        ranges = [max(c) - min(c) for c in zip(*probability, strict=True)]
        stds = [statistics.stdev(c) for c in zip(*probability, strict=True)]
        print(f"answer probability moves by > 0.01 on {sum(r > 0.01 for r in ranges) / prompts:.1%}, by > 0.05 on "
              f"{sum(r > 0.05 for r in ranges) / prompts:.1%} of prompts; median range "
              f"{statistics.median(ranges):.3f}, median std across fine-tunes {statistics.median(stds):.3f}")


if __name__ == "__main__":
    main()
