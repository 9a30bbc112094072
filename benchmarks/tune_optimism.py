"""How much a reference's search fitness over-promises, with the rate chosen on the ranking seed or on tuning seeds.

Issue 24 item 4 on the diagnostic tier: with ``training.tune_seeds`` = 0 the protocol (``fitness.tuning``) chooses a
row's rate on the even-indexed search contexts and ranks it on the odd-indexed ones *of the same seed*; with k > 0
it chooses on k tuning seeds (``diagnostic_tune.tuning_seeds``) and ranks on the ranking seed's every search
context. Either way, the ranked value is compared with the mean of fresh seeds (``confirmation.fresh_seeds``) at the
chosen rate *on the same contexts*, so the difference (the optimism) is the selection on seed noise alone, not the
level difference between the search and the confirming contexts. A positive mean optimism is a search fitness that
promises more than fresh seeds give.

Only trusted reference losses run, in this process, on ``diagnostic_tune.fine_tune`` (as ``preset_gaps.py``); each
reference is tuned over the whole grid (a run's climb stops at a local maximum, which on these grids is nearly
always the same point). Several counts are measured side by side on the same fine-tunes (each is run once).

The raw optimism carries each run seed's luck, which every reference and rate share (common random numbers): the
second figure subtracts the same run seed's optimism averaged over every rate (fresh seeds at every rate), which
leaves the selection's own share, the winner's curse of the choice.

    python benchmarks/tune_optimism.py --presets mixed_quality --runs 6 --run-step 10 --fresh 3 --tune-seeds 0,3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from discopop.contract.losses import load_loss
from discopop.fitness.diagnostic_tune import fine_tune, tuning_seeds
from discopop.proposers.reference import available, reference_candidate
from discopop.search.confirmation import fresh_seeds
from discopop.tasks.diagnostic import KL_COEF, flip_rate, setting, split_contexts

LRS = (0.003, 0.01, 0.03, 0.1, 0.3)  # conf/training/diagnostic.yaml's lr_grid


def optimism(preset: str, losses: list[str], runs: int, fresh: int, lrs: tuple[float, ...],
             ks: list[int], step: int = 1) -> list[dict]:
    """One row per tuning-seed count: per reference and run seed, (ranked search fitness, fresh-seed mean)."""
    s = setting(preset, kl_coef=KL_COEF, extra_confirm_contexts=0)  # only the search contexts are scored here
    search = split_contexts(s, "search")
    found: dict[int, dict[str, list[tuple[float, float, float]]]] = {k: {} for k in ks}
    # The same at every rate, averaged: what a run seed's luck alone gives (no choice), the control for ``found``
    luck: dict[int, dict[str, list[float]]] = {k: {} for k in ks}
    started = time.perf_counter()
    for name in losses:
        fn = load_loss(reference_candidate(name, flip_rate(s)).code)
        memo: dict[tuple[int, float], np.ndarray] = {}

        def fitness(seed: int, lr: float, fn=fn, memo=memo) -> np.ndarray:
            if (seed, lr) not in memo:
                r = fine_tune(fn, s, seed=seed, lr=lr)
                memo[seed, lr] = (np.asarray(r.per_context_reward) - s.kl_coef * np.asarray(r.per_context_kl))[search]
            return memo[seed, lr]

        for base in range(0, runs * step, step):
            for k in ks:
                if k == 0:  # the even contexts choose, the odd ones rank (fitness.tuning.split_fitness)
                    choose = {lr: fitness(base, lr)[0::2].mean() for lr in lrs}
                    part = slice(1, None, 2)
                else:
                    choose = {lr: np.mean([fitness(t, lr).mean() for t in tuning_seeds(base, k)]) for lr in lrs}
                    part = slice(None)
                lr = max(sorted(choose), key=lambda x: choose[x])  # ties: the smaller rate, as Sweep.best_point
                ranked = float(fitness(base, lr)[part].mean())
                later = float(np.mean([fitness(f, lr)[part].mean() for f in fresh_seeds(base, fresh)]))
                found[k].setdefault(name, []).append((lr, ranked, later))
                luck[k].setdefault(name, []).append(float(np.mean([
                    fitness(base, x)[part].mean() - np.mean([fitness(f, x)[part].mean() for f in fresh_seeds(
                        base, fresh)]) for x in lrs])))
    rows = []
    for k in ks:
        gaps = [ranked - later for runs_of in found[k].values() for _, ranked, later in runs_of]
        per_ref = {n: float(np.mean([r - f for _, r, f in v])) for n, v in found[k].items()}
        # A run seed's luck is shared by every reference (common random numbers): the se is over run seeds.
        per_run = [float(np.mean([v[i][1] - v[i][2] for v in found[k].values()])) for i in range(runs)]
        se = float(np.std(per_run, ddof=1) / np.sqrt(runs)) if runs > 1 else float("nan")
        # The choice's own share: the optimism at the chosen rate less the same seed's mean over every rate
        chosen = [float(np.mean([v[i][1] - v[i][2] - luck[k][n][i] for n, v in found[k].items()])) for i in range(runs)]
        se_chosen = float(np.std(chosen, ddof=1) / np.sqrt(runs)) if runs > 1 else float("nan")
        print(f"{preset} tune_seeds={k}: mean optimism (ranked search - fresh-seed mean, same contexts) "
              f"{np.mean(gaps):+.4f} (se over {runs} run seeds {se:.4f}; per run seed "
              f"{', '.join(f'{g:+.4f}' for g in per_run)}); of which the choice (less the seed's mean over every "
              f"rate) {np.mean(chosen):+.4f} (se {se_chosen:.4f}); "
              f"mean |optimism| per reference {np.mean(np.abs(list(per_ref.values()))):.4f}; "
              f"rates {sorted({lr for v in found[k].values() for lr, _, _ in v})}")
        rows.append({"preset": preset, "tune_seeds": k, "runs": runs, "fresh": fresh, "mean_optimism": float(
            np.mean(gaps)), "se": se, "per_run": per_run, "choice": float(np.mean(chosen)),
                     "choice_se": se_chosen, "choice_per_run": chosen, "per_reference": per_ref,
                     "chosen": {n: [lr for lr, _, _ in v] for n, v in found[k].items()}})
    print(f"  ({time.perf_counter() - started:.0f} s for {preset})", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="mixed_quality,label_noise")
    parser.add_argument("--losses", default=",".join(available()))
    parser.add_argument("--runs", type=int, default=3, help="run seeds 0..N-1, each a ranking seed")
    parser.add_argument("--fresh", type=int, default=5, help="fresh seeds per run (base + 1000 + i)")
    parser.add_argument("--run-step", type=int, default=1,
                        help="run seeds 0, step, 2 step, ...: a step >= --fresh keeps the runs' fresh seeds apart")
    parser.add_argument("--tune-seeds", default="0,3", help="counts measured side by side")
    parser.add_argument("--lrs", default=",".join(f"{lr:g}" for lr in LRS))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest and leaves the other core to the machine
    ks = [int(k) for k in args.tune_seeds.split(",")]
    lrs = tuple(float(x) for x in args.lrs.split(","))
    rows = []
    for preset in (p for p in args.presets.split(",") if p):
        rows.extend(optimism(preset, [n for n in args.losses.split(",") if n], args.runs, args.fresh, lrs, ks,
                             args.run_step))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
