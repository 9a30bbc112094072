"""Size and power of the confirmation's statistics on real fine-tunes (the diagnostic tier), old rule beside new.

The simulation in ``tests/test_stats.py`` draws scores from a crossed random-effects model; this
benchmark checks the same statistics on what they are really applied to: per-context scores of
fine-tuned policies. It trains one pool of independent seeds of a loss once, then

* **nulls**: splits the pool into disjoint pairs of S-seed arms (the same loss on both sides, so every
  rejection is a false positive) and compares each pair with ``stats.compare`` on the seeds x contexts
  matrix of differences, for S in ``--seeds``; each null's p-value is computed by the new estimator
  (``stats.crossed_variance``: unbiased, floored, bounded Satterthwaite df) and by the old one
  ((MS_seed + MS_prompt) / (S P), df = S - 1), so the two rules' false-positive rates come from the
  same fine-tunes;
* **positive control**: the same loss at a second learning rate (``--control-lr``, several times the
  first) trained on the same seeds, a known gap (its size measured on every pooled seed), compared
  in paired S-seed groups as the confirmation compares two losses; the detection rate of each rule
  against the stated minimum detectable effect.

One comparison at a time (no Holm family): the rates are per comparison, alpha = stats.ALPHA.

    python benchmarks/diagnostic_nulls.py --pool 3000 --seeds 2,3,5,10
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from discopop.contract.losses import load_loss
from discopop.fitness import stats
from discopop.fitness.diagnostic_tune import fine_tune
from discopop.fitness.student_t import two_sided_p
from discopop.proposers.reference import PROPOSALS_DIR
from discopop.tasks.diagnostic import PRESETS

FIRST_SEED = 2_000_000  # far from the seeds the tier's table tunes and ranks on


def train_pool(loss: str, setting: str, lr: float, count: int) -> np.ndarray:
    """``count`` fine-tunes of ``loss`` on independent seeds: a seeds x contexts matrix of per-context fitness."""
    fn = load_loss((PROPOSALS_DIR / f"{loss}.py").read_text())  # a TRUSTED reference file: loaded in process
    s = PRESETS[setting]
    return np.asarray([fine_tune(fn, s, seed=FIRST_SEED + k, lr=lr).per_context for k in range(count)])


def p_values(diffs: np.ndarray) -> dict[str, np.ndarray]:
    """Two-sided p of each [n, S, P] difference matrix under the old and the new rule."""
    n, seeds, prompts = diffs.shape
    mean = diffs.mean(axis=(1, 2))
    row = diffs.mean(axis=2, keepdims=True)
    col = diffs.mean(axis=1, keepdims=True)
    grand = mean[:, None, None]
    ms_seed = prompts * ((row - grand) ** 2).sum(axis=(1, 2)) / (seeds - 1)
    ms_prompt = seeds * ((col - grand) ** 2).sum(axis=(1, 2)) / (prompts - 1)
    ms_res = ((diffs - row - col + grand) ** 2).sum(axis=(1, 2)) / ((seeds - 1) * (prompts - 1))
    old_se = np.sqrt((ms_seed + ms_prompt) / (seeds * prompts))
    var, df = stats.crossed_variance(ms_seed, ms_prompt, ms_res, seeds, prompts)
    new_se = np.sqrt(var)
    return {"old": two_sided_p(mean / old_se, np.full(n, float(seeds - 1))),
            "new": two_sided_p(mean / new_se, df),
            "mde": stats.minimum_detectable(new_se, df), "mean": mean}


def groups(pool: np.ndarray, seeds: int, arms: int) -> np.ndarray:
    """Disjoint groups of ``arms`` x ``seeds`` rows of the pool: [n, arms, seeds, P]."""
    n = len(pool) // (arms * seeds)
    return pool[: n * arms * seeds].reshape(n, arms, seeds, pool.shape[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loss", default="dpo")
    parser.add_argument("--setting", default="clean", choices=sorted(PRESETS))
    parser.add_argument("--lr", type=float, default=0.03, help="the loss's rate (DPO's best on 'clean')")
    parser.add_argument("--control-lr", type=float, default=0.3, help="the positive control's rate")
    parser.add_argument("--pool", type=int, default=3000, help="independent seeds trained at --lr")
    parser.add_argument("--control-pool", type=int, default=600, help="of those seeds, trained at --control-lr too")
    parser.add_argument("--seeds", default="2,3,5,10", help="seeds per arm")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = [int(x) for x in args.seeds.split(",")]

    started = time.perf_counter()
    pool = train_pool(args.loss, args.setting, args.lr, args.pool)
    seconds = time.perf_counter() - started
    print(f"{args.pool} fine-tunes of {args.loss} on '{args.setting}' at lr {args.lr}: {seconds:.0f} s "
          f"({args.pool / seconds * 3600:.0f} per hour on one core, in process); fitness mean {pool.mean():.4f}, "
          f"seed SD {pool.mean(axis=1).std(ddof=1):.4f}, {pool.shape[1]} contexts")
    print(f"\nnulls ({args.loss} against itself on disjoint fresh seeds), two-sided alpha {stats.ALPHA}:")
    print(f"{'seeds/arm':>9} {'nulls':>6} {'old rule':>16} {'new rule':>16} {'median MDE':>11}")
    for s in sizes:
        g = groups(pool, s, 2)
        if len(g) == 0:
            continue
        p = p_values(g[:, 0] - g[:, 1])
        n = len(g)
        mc = 3 * math.sqrt(stats.ALPHA * (1 - stats.ALPHA) / n)
        print(f"{s:>9} {n:>6} {np.mean(p['old'] < stats.ALPHA):>15.1%} {np.mean(p['new'] < stats.ALPHA):>15.1%}"
              f" {np.median(p['mde']):>11.4f}   (3 MC SE: {mc:.1%})")

    control = train_pool(args.loss, args.setting, args.control_lr, args.control_pool)
    paired = np.stack([pool[: len(control)], control], axis=1)  # [seeds, 2, P]: the same seeds at both rates
    gap = float((paired[:, 0] - paired[:, 1]).mean())
    print(f"\npositive control: {args.loss} at lr {args.lr} against lr {args.control_lr} on the same seeds; "
          f"true gap {gap:+.4f} (mean over {len(control)} seeds x {pool.shape[1]} contexts)")
    print(f"{'seeds':>9} {'groups':>6} {'old detects':>16} {'new detects':>16} {'median MDE':>11}")
    for s in sizes:
        n = len(control) // s
        if n == 0:
            continue
        g = paired[: n * s].reshape(n, s, 2, -1)
        p = p_values(g[:, :, 0] - g[:, :, 1])
        right = np.sign(p["mean"]) == np.sign(gap)
        print(f"{s:>9} {n:>6} {np.mean((p['old'] < stats.ALPHA) & right):>15.1%} "
              f"{np.mean((p['new'] < stats.ALPHA) & right):>15.1%} {np.median(p['mde']):>11.4f}")
    print(f"\n{time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
