"""The diagnostic tier (``discopop.tasks.diagnostic``): how fast, how well it separates losses, how honest its nulls.

Three parts, each optional:

* ``--speed N``: N fine-tunes through a :class:`RemoteLoss` (the loss runs in a real sandboxed oracle,
  one oracle per loss, reused for its fine-tunes) and the same N with the loss loaded in this process;
  fine-tunes per hour of each (one process, one torch thread), their ratio, the one-off cost of an
  oracle (start + first call), and the largest difference between the two arms' fitness.
* ``--table``: per setting, each reference loss at its best learning rate of ``--grid`` (chosen on the
  ``--tune-seeds``), scored on the disjoint ``--rank-seeds``: mean fitness (reward - ``--kl-coef`` x KL, the
  tier's default price unless set), its reward and KL apart, seed-to-seed SD, the SD of its paired difference
  to DPO (same seeds: common random numbers), and the spread of the references (best - worst mean) in units
  of both SDs.
* ``--nulls N``: N comparisons of DPO with itself on independent fresh seeds (``--null-seeds`` per
  arm), each through ``discopop.fitness.stats.compare`` on the contexts x seeds matrix and ``decide``; the
  rejection rate should be at most alpha.

The table and the nulls load the TRUSTED reference files of ``discopop/proposals`` in this process.

    python benchmarks/diagnostic_tier.py --speed 26 --table
    python benchmarks/diagnostic_tier.py --nulls 500
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable

import torch

from discopop.contract.losses import load_loss
from discopop.fitness import stats
from discopop.fitness.diagnostic_tune import DiagnosticFailure, DiagnosticResult, fine_tune
from discopop.proposers.reference import PROPOSALS_DIR, available
from discopop.tasks.diagnostic import KL_COEF, PRESETS, DiagnosticSetting, describe, setting


def loss_source(name: str) -> str:
    return (PROPOSALS_DIR / f"{name}.py").read_text()


def speed(names: list[str], runs: int, s: DiagnosticSetting, lr: float) -> None:
    from discopop.sandbox import Limits
    from discopop.sandbox.oracle_supply import OracleSupply
    from discopop.sandbox.remote_loss import OracleLink, RemoteLoss

    jobs = [(names[i % len(names)], i // len(names)) for i in range(runs)]
    local: dict[tuple[str, int], float] = {}
    started = time.perf_counter()
    for name, seed in jobs:
        local[name, seed] = fine_tune(load_loss(loss_source(name)), s, seed=seed, lr=lr).fitness
    in_process = (time.perf_counter() - started) / runs
    supply = OracleSupply(Limits(), standby=1)
    remote_seconds, one_off, diff = 0.0, [], 0.0
    try:
        for name in dict.fromkeys(n for n, _ in jobs):
            begun = time.perf_counter()
            oracle = supply.take()
            try:
                link = OracleLink(oracle.sock, call_timeout=60.0)
                link.load(loss_source(name))
                fn = RemoteLoss(link)
                fine_tune(fn, s, seed=0, lr=lr, steps=1)  # the oracle's first backward is slow (one-off)
                one_off.append(time.perf_counter() - begun)
                for seed in (k for n, k in jobs if n == name):
                    begun = time.perf_counter()
                    fitness = fine_tune(fn, s, seed=seed, lr=lr).fitness
                    remote_seconds += time.perf_counter() - begun
                    diff = max(diff, abs(fitness - local[name, seed]))
            finally:
                oracle.close()
    finally:
        supply.close()
    remote = remote_seconds / runs
    print(f"speed on '{s.name}' ({s.steps} steps x {s.batch} pairs), {runs} fine-tunes, load avg "
          f"{os.getloadavg()[0]:.1f}:")
    print(f"  in-process : {in_process:.3f} s/fine-tune = {3600 / in_process:,.0f}/h per core")
    print(f"  RemoteLoss : {remote:.3f} s/fine-tune = {3600 / remote:,.0f}/h per core "
          f"(x{remote / in_process:.1f} in-process); per oracle once: {statistics.mean(one_off):.2f} s "
          f"(start + first call, {len(one_off)} oracles)")
    print(f"  largest |fitness difference| oracle vs in-process: {diff:.2e}")


def seed_runs(fn: Callable, s: DiagnosticSetting, lr: float, seeds: list[int]) -> list[DiagnosticResult] | None:
    try:
        return [fine_tune(fn, s, seed=k, lr=lr) for k in seeds]
    except DiagnosticFailure:
        return None


def seed_means(fn: Callable, s: DiagnosticSetting, lr: float, seeds: list[int]) -> list[float] | None:
    runs = seed_runs(fn, s, lr, seeds)
    return None if runs is None else [r.fitness for r in runs]


def table(names: list[str], settings: list[str], grid: list[float], tune: list[int], rank: list[int],
          kl_coef: float = KL_COEF) -> None:
    fns = {n: load_loss(loss_source(n)) for n in names}
    print(f"\nper setting: best lr of {grid} on seeds {tune}; scored on seeds {rank[0]}..{rank[-1]} "
          f"(fitness = exact mean reward - {kl_coef:g} x KL on held-out contexts; reward and KL are their means)")
    for sname in settings:
        s = setting(sname, kl_coef=kl_coef)
        started = time.perf_counter()
        rows = []
        parts: dict[str, tuple[float, float]] = {}
        for name, fn in fns.items():
            tuned = [(lr, statistics.mean(v)) for lr in grid if (v := seed_means(fn, s, lr, tune)) is not None]
            if not tuned:
                print(f"  {name}: failed at every lr")
                continue
            lr = max(tuned, key=lambda t: t[1])[0]
            runs = seed_runs(fn, s, lr, rank)
            if runs is not None:
                parts[name] = (statistics.mean(r.reward for r in runs), statistics.mean(r.kl for r in runs))
            rows.append((name, lr, None if runs is None else [r.fitness for r in runs]))
        rows = [r for r in rows if r[2] is not None]
        rows.sort(key=lambda r: -statistics.mean(r[2]))
        by_name = {n: v for n, _, v in rows}
        base = by_name.get("dpo", rows[0][2])
        info = describe(s)
        print(f"\n[{sname}] reference pi_ref {info['reference_reward']:.3f}, best possible {info['best_reward']:.3f}, "
              f"pi_ref mode is best {info['mode_is_best']:.0%}, labels right {info['labels_correct']:.0%} "
              f"({time.perf_counter() - started:.0f} s)")
        print(f"  {'loss':10s} {'lr':>6s} {'mean':>7s} {'reward':>7s} {'KL':>6s} {'SD':>6s} {'SD(d dpo)':>9s} "
              f"{'vs dpo':>7s}")
        for name, lr, v in rows:
            paired = statistics.stdev([a - b for a, b in zip(v, base, strict=True)])
            edge = "  (lr at grid edge)" if lr in (grid[0], grid[-1]) else ""
            print(f"  {name:10s} {lr:6g} {statistics.mean(v):7.3f} {parts[name][0]:7.3f} {parts[name][1]:6.3f} "
                  f"{statistics.stdev(v):6.3f} {paired:9.4f} "
                  f"{statistics.mean(v) - statistics.mean(base):+7.3f}{edge}")
        means = [statistics.mean(v) for _, _, v in rows]
        sd = statistics.median(statistics.stdev(v) for _, _, v in rows)
        psd = statistics.median(statistics.stdev([a - b for a, b in zip(v, base, strict=True)])
                                for n, _, v in rows if v is not base)
        print(f"  winner {rows[0][0]}; spread {max(means) - min(means):.3f} = {(max(means) - min(means)) / sd:.1f} x "
              f"median seed SD ({sd:.4f}) = {(max(means) - min(means)) / psd:.1f} x median paired SD ({psd:.4f}); "
              f"top-2 gap {means[0] - means[1]:.4f}")


def nulls(count: int, per_arm: int, s: DiagnosticSetting, lr: float, loss: str = "dpo", start: int = 0) -> None:
    """``count`` comparisons of ``loss`` with itself, every arm on its own fresh seeds (chunks: ``start``)."""
    fn = load_loss(loss_source(loss))
    started = time.perf_counter()
    rejected, below, beats = 0, 0, 0
    for i in range(start, start + count):
        first = 1_000_000 + 2 * per_arm * i
        arms = [[fine_tune(fn, s, seed=first + a * per_arm + k, lr=lr).per_context for k in range(per_arm)]
                for a in (0, 1)]
        comp = stats.decide([stats.compare(loss, loss, arms[0], arms[1])])[0]
        below += comp.verdict == stats.BELOW
        beats += comp.verdict == stats.BEATS
        rejected = below + beats
    rate = rejected / count
    half = 1.96 * math.sqrt(max(rate * (1 - rate), 1e-12) / count)
    print(f"\nnulls: {count} comparisons of {loss} with itself on '{s.name}' at lr {lr}, {per_arm} fresh seeds per "
          f"arm x {s.eval_contexts} contexts: rejected {rejected} ({rate:.1%} +- {half:.1%}; beats {beats}, "
          f"below {below}) at alpha {stats.ALPHA}; comparisons {start}..{start + count - 1} "
          f"({time.perf_counter() - started:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speed", type=int, default=0, help="fine-tunes per arm of the speed measurement")
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--nulls", type=int, default=0)
    parser.add_argument("--null-seeds", type=int, default=3, help="fresh seeds per arm of a null comparison")
    parser.add_argument("--null-start", type=int, default=0, help="index of the first null (to run them in chunks)")
    parser.add_argument("--losses", default=",".join(available()))
    parser.add_argument("--settings", default=",".join(PRESETS))
    parser.add_argument("--grid", default="0.003,0.01,0.03,0.1,0.3")
    parser.add_argument("--tune-seeds", default="0,1,2")
    parser.add_argument("--rank-seeds", default=",".join(str(100 + k) for k in range(10)))
    parser.add_argument("--lr", type=float, default=0.03, help="lr of the speed runs and the nulls")
    parser.add_argument("--kl-coef", type=float, default=KL_COEF,
                        help=f"the table's fitness = reward - kl_coef x KL (default {KL_COEF:g}: task.kl_coef's)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = args.losses.split(",")
    if args.speed:
        speed(names, args.speed, PRESETS["clean"], args.lr)
    if args.table:
        table(names, args.settings.split(","), [float(x) for x in args.grid.split(",")],
              [int(x) for x in args.tune_seeds.split(",")], [int(x) for x in args.rank_seeds.split(",")],
              args.kl_coef)
    if args.nulls:
        nulls(args.nulls, args.null_seeds, PRESETS["clean"], args.lr, start=args.null_start)


if __name__ == "__main__":
    main()
