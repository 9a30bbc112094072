"""Do the references need their own constants tuned, or does the beta axis cover it? (issue 24, item 4)

On the diagnostic tier (exact scores, a fine-tune in under a second), each reference loss is tuned three ways
on one seed's search contexts, choosing on the even-indexed contexts and reporting the odd-indexed ones (the
protocol of ``discopop.fitness.tuning``), over full grids:

* ``lr``: the learning-rate grid at the run's beta (today's protocol);
* ``lr x beta``: plus beta x {0.5, 1, 2} (``training.beta_grid``);
* ``lr x beta x constants``: plus each declared constant of ``proposers.reference.TUNABLE_CONSTANTS`` one step
  down and up (``constant_variants``: a coordinate grid, 1 + 2k settings).

It prints each reference's ranking-half fitness and chosen point per arm, the references' rank per arm, and
the gain of each extra axis. The reference files are TRUSTED code (``discopop/proposals``), loaded in this
process as ``benchmarks/diagnostic_tier.py`` does; cDPO and rDPO run at the preset's flip rate.

    python benchmarks/reference_constants.py --presets label_noise deterministic
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from discopop.contract.losses import load_loss
from discopop.fitness.diagnostic_tune import DiagnosticFailure, fine_tune
from discopop.proposers.reference import NOISE_CONSTANTS, available, constant_variants, reference_candidate
from discopop.tasks.diagnostic import KL_COEF, setting, split_contexts

LR_GRID = (0.003, 0.01, 0.03, 0.1, 0.3)  # configs/training/diagnostic.yaml
BETA_MULTIPLIERS = (0.5, 1.0, 2.0)


def halves(values: list[float]) -> tuple[float, float]:
    """(tune, rank): the mean of the even- and of the odd-indexed contexts."""
    tune, rank = values[0::2], values[1::2]
    return sum(tune) / len(tune), sum(rank) / len(rank)


def sweep(name: str, preset: str, kl_coef: float, seed: int) -> dict[tuple[float, float, str], tuple[float, float]]:
    """(lr, beta multiplier, constants) -> (tune, rank) fitness on the search contexts; failures left out."""
    s = setting(preset, kl_coef=kl_coef)
    part = split_contexts(s, "search")
    flip = s.label_noise if name in NOISE_CONSTANTS else None
    out = {}
    for constants in constant_variants(name):
        loss = load_loss(reference_candidate(name, flip_rate=flip, constants=constants).code)
        label = ",".join(f"{k}={v:g}" for k, v in constants.items()) or "default"
        for lr in LR_GRID:
            for m in BETA_MULTIPLIERS:
                try:
                    result = fine_tune(loss, s, seed=seed, lr=lr, beta=s.beta * m)
                except DiagnosticFailure:
                    continue
                values = result.per_context[part]
                if all(map(math.isfinite, values)):
                    out[lr, m, label] = halves(values)
    return out


def choose(points: dict, keep) -> tuple[tuple, float, float] | None:
    """The point with the best tuning half among those ``keep`` admits: (point, tune, rank)."""
    admitted = [(p, v) for p, v in sorted(points.items()) if keep(p)]
    if not admitted:
        return None
    point, (tune, rank) = max(admitted, key=lambda item: item[1][0])
    return point, tune, rank


ARMS = {
    "lr": lambda p: p[1] == 1.0 and p[2] == "default",
    "lr x beta": lambda p: p[2] == "default",
    "lr x beta x constants": lambda p: True,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["label_noise", "deterministic"])
    parser.add_argument("--losses", nargs="+", default=None, help="default: every reference")
    parser.add_argument("--kl-coef", type=float, default=KL_COEF,
                        help=f"task.kl_coef (the diagnostic tier's default, {KL_COEF:g}; results.md's table: 0)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = args.losses or available()
    for preset in args.presets:
        started = time.perf_counter()
        chosen = {}
        for name in names:
            points = sweep(name, preset, args.kl_coef, args.seed)
            chosen[name] = {arm: choose(points, keep) for arm, keep in ARMS.items()}
        print(f"\n## preset {preset} (seed {args.seed}, kl_coef {args.kl_coef:g}): ranking-half fitness at the point "
              f"the tuning half chose  [{time.perf_counter() - started:.0f} s]")
        ranks = {}
        for arm in ARMS:
            order = sorted(names, key=lambda n: -(chosen[n][arm][2] if chosen[n][arm] else -math.inf))
            ranks[arm] = {n: i + 1 for i, n in enumerate(order)}
        print(f"{'loss':9} | {'lr':>22} | {'lr x beta':>26} | {'lr x beta x constants':>44} | "
              "gain beta | gain const | ranks")
        for name in names:
            cells = []
            for arm in ARMS:
                found = chosen[name][arm]
                if found is None:
                    cells.append("failed")
                    continue
                (lr, m, label), _, rank = found
                where = f"lr {lr:g}" + ("" if arm == "lr" else f", b x{m:g}") + (
                    f", {label}" if arm.endswith("constants") else "")
                cells.append(f"{rank:.4f} ({where})")
            values = [chosen[name][arm][2] if chosen[name][arm] else math.nan for arm in ARMS]
            print(f"{name:9} | {cells[0]:>22} | {cells[1]:>26} | {cells[2]:>44} | {values[1] - values[0]:+.4f}   | "
                  f"{values[2] - values[1]:+.4f}    | {'/'.join(str(ranks[a][name]) for a in ARMS)}")


if __name__ == "__main__":
    main()
