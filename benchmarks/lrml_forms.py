"""LRML in both of its forms across beta, on the diagnostic tier (exact reward, exact KL, no sampling noise).

The paper's Eq. 5 modulates with sigmoid(beta * rho / tau) (the shipped ``proposals/lrml.py``, TRL's
``discopop``); its released code modulates with sigmoid(rho) (``benchmarks/losses/lrml_code_form.py``). Their
slopes at rho = 0, where every fine-tune starts, differ in sign for beta > ~0.1: +0.784 * beta for the first
(towards the rejected answer) and (1 - log 2) / 4 - 0.75 * beta for the second. This measures what that does
to training: per beta and setting, each form and DPO at its best learning rate of ``--grid`` (chosen on the
``--tune-seeds``), scored on the disjoint ``--rank-seeds`` (mean, seed SD, difference to DPO on the same
seeds), and how many fine-tunes failed (a non-finite loss or policy: the paper's "NaN at large beta").
The losses are trusted files of this repository, loaded in this process.

    python benchmarks/lrml_forms.py                      # betas 0.01..2.5, settings clean and deterministic
    python benchmarks/lrml_forms.py --betas 0.05,0.5 --settings label_noise
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from discopop.contract.losses import load_loss
from discopop.fitness.diagnostic_tune import DiagnosticFailure, fine_tune
from discopop.proposers.reference import PROPOSALS_DIR
from discopop.tasks.diagnostic import setting

FORMS = {
    "lrml (Eq. 5, beta*rho/tau)": PROPOSALS_DIR / "lrml.py",
    "lrml (code, rho)": Path(__file__).resolve().parent / "losses" / "lrml_code_form.py",
    "dpo": PROPOSALS_DIR / "dpo.py",
}


def slope_at_zero(fn, beta: float) -> float:
    """d loss / d rho at rho = 0 (policy = reference): the direction the first step takes."""
    rho = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(1, dtype=torch.float64)
    fn(rho, zero, zero, zero, beta).sum().backward()
    return float(rho.grad.item())


def scores(fn, preset: str, beta: float, lr: float, seeds: list[int]) -> tuple[list[float], int]:
    """Fitness per seed (failed fine-tunes left out) and the number that failed."""
    values, failed = [], 0
    for seed in seeds:
        try:
            values.append(fine_tune(fn, setting(preset), seed=seed, lr=lr, beta=beta).fitness)
        except DiagnosticFailure:
            failed += 1
    return values, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--betas", default="0.01,0.05,0.1,0.5,1,2.5")
    parser.add_argument("--settings", default="clean,deterministic")
    parser.add_argument("--grid", default="0.003,0.01,0.03,0.1,0.3")
    parser.add_argument("--tune-seeds", default="0,1,2")
    parser.add_argument("--rank-seeds", default=",".join(str(100 + k) for k in range(10)))
    args = parser.parse_args()
    torch.set_num_threads(1)
    fns = {name: load_loss(path.read_text()) for name, path in FORMS.items()}
    grid = [float(x) for x in args.grid.split(",")]
    tune = [int(x) for x in args.tune_seeds.split(",")]
    rank = [int(x) for x in args.rank_seeds.split(",")]
    started = time.perf_counter()
    for preset in args.settings.split(","):
        print(f"\n[{preset}] best lr of {grid} on seeds {tune}, scored on {len(rank)} seeds "
              f"(fitness = exact reward - kl_coef * KL on held-out contexts)")
        print(f"  {'beta':>5s} {'loss':28s} {'slope@0':>8s} {'lr':>6s} {'mean':>7s} {'SD':>6s} {'vs dpo':>7s} "
              f"{'failed':>7s}")
        for beta in (float(b) for b in args.betas.split(",")):
            rows = {}
            for name, fn in fns.items():
                tuned, failed = [], 0
                for lr in grid:
                    values, bad = scores(fn, preset, beta, lr, tune)
                    failed += bad
                    if len(values) == len(tune):
                        tuned.append((statistics.mean(values), lr))
                if not tuned:
                    rows[name] = (None, [], failed)
                    continue
                lr = max(tuned)[1]
                values, bad = scores(fn, preset, beta, lr, rank)
                rows[name] = (lr, values, failed + bad)
            base = rows["dpo"][1]
            for name, (lr, values, failed) in rows.items():
                slope = slope_at_zero(fns[name], beta)
                if lr is None or len(values) < 2:
                    print(f"  {beta:5g} {name:28s} {slope:+8.4f} {'-':>6s} {'failed at every rate':>22s} {failed:7d}")
                    continue
                diff = (statistics.mean(values) - statistics.mean(base)) if len(base) == len(values) else float("nan")
                print(f"  {beta:5g} {name:28s} {slope:+8.4f} {lr:6g} {statistics.mean(values):7.3f} "
                      f"{statistics.stdev(values):6.3f} {diff:+7.3f} {failed:7d}")
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
