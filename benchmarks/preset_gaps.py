"""Which diagnostic presets separate the reference losses? A quick in-process scan of the DPO-to-best gap.

Issue 24's third figure needs a gap to resolve: on ``label_noise`` DPO sits within 0.001-0.010 of the best
reference (Bradley-Terry labels make it the labels' own MLE). This scan finds the presets where loss shape
moves the KL-priced fitness, before the slower ``task_calibration.py`` (every fine-tune through a sandboxed
oracle, as a run does) measures the chosen ones. Only the *trusted* reference losses run here, in this process
(``contract.losses.load_loss``), on ``fitness.diagnostic_tune.fine_tune`` directly, with the evaluate protocol's
choices: the rate picked from the diagnostic ``lr_grid`` (``--lrs``) on the search contexts, then ``--seeds``
fresh seeds (1000, 1001, ...) at that rate scored on the confirming contexts, fitness = reward - kl_coef * KL.
The rate is chosen as a run chooses it (``training.tune_seeds``, ``fitness.tuning``): with ``--tune-seeds k`` > 0
on the mean of k tuning seeds (``diagnostic_tune.tuning_seeds(0, k)``: 2000, 2001, ...), with 0 on seed 0 itself.
Several values (``--tune-seeds 0,3``) are measured side by side on the same fine-tunes (each is run once).

    python benchmarks/preset_gaps.py --presets label_noise,mixed_quality --seeds 5
    python benchmarks/preset_gaps.py --presets label_noise --set extra_confirm_contexts=3840
    python benchmarks/preset_gaps.py --presets clean+hard_flip=0.5   # a preset with its own field overrides
    python benchmarks/preset_gaps.py --presets mixed_quality+sampler=0/0.5/0.5   # a tuple field, with slashes
    python benchmarks/preset_gaps.py --presets mixed_quality --tune-seeds 0,3 --lrs 0.005,0.01,0.02,0.04,0.08

Each row also prints issue 24's figure (i), ``fitness.calibration``'s share of held-out contexts whose score varies
across losses and seeds (SD over every reference's fresh fine-tunes above ``--threshold``), on the score term (the
bandit's exact per-context reward, as ``task_calibration.py`` reads it from a run) and on the per-context fitness;
and the same over the strongest reference's fresh seeds alone (seed noise only: a share driven by the gap between
good and broken references alone would be high there too without meaning that one loss's seeds disagree).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from discopop.contract.losses import load_loss
from discopop.fitness.calibration import VARY_THRESHOLD, ArmScores, calibrate, varying_share
from discopop.fitness.diagnostic_tune import fine_tune, tuning_seeds
from discopop.proposers.reference import available, reference_candidate
from discopop.tasks.diagnostic import KL_COEF, flip_rate, setting, split_contexts

LRS = (0.003, 0.01, 0.03, 0.1, 0.3)  # conf/training/diagnostic.yaml's lr_grid
FRESH = 1000  # the first fresh seed, as a confirmation's


def tier_tune_seeds() -> int:
    """The diagnostic tier's ``training.tune_seeds`` (conf/training/diagnostic.yaml), the default of --tune-seeds."""
    from discopop.config.compose import compose  # lazy: hydra only when the default is asked for

    cfg, _ = compose(["task=diagnostic"])
    return int(cfg["training"].get("tune_seeds") or 0)


def _value(text: str) -> float | int | tuple[float, ...]:
    """A field's value: an int, a float, or a tuple written with slashes (``sampler=0/0.5/0.5``)."""
    if "/" in text:
        return tuple(float(part) for part in text.split("/"))
    return int(text) if text.lstrip("-").isdigit() else float(text)


def scan(preset: str, losses: list[str], seeds: int, lrs: tuple[float, ...], family: int,
         overrides: dict[str, float | int], ks: list[int], counts: list[int] | None = None,
         threshold: float = VARY_THRESHOLD) -> list[dict]:
    """One preset, one row per tuning-seed count in ``ks`` and fresh-seed count in ``counts`` (the first n of the
    ``seeds`` fresh seeds; default: all): each reference's rate, fresh-seed fitness matrices, and the calibration
    figures (fine-tunes shared between the rows, each run once)."""
    s = setting(preset, kl_coef=KL_COEF, **overrides)
    search, confirm = split_contexts(s, "search"), split_contexts(s, "confirm")
    arms: dict[int, dict[str, ArmScores]] = {k: {} for k in ks}
    rates: dict[int, dict[str, float]] = {k: {} for k in ks}
    sweeps: dict[int, dict[str, dict[str, float]]] = {k: {} for k in ks}
    seconds: list[float] = []
    for name in losses:
        fn = load_loss(reference_candidate(name, flip_rate(s)).code)
        memo: dict[tuple[int, float], tuple[np.ndarray, np.ndarray]] = {}

        def scores(seed: int, lr: float, part: slice, fn=fn, memo=memo) -> tuple[np.ndarray, np.ndarray]:
            """(per-context fitness, per-context exact reward) of one fine-tune on ``part``."""
            if (seed, lr) not in memo:
                started = time.perf_counter()
                r = fine_tune(fn, s, seed=seed, lr=lr)
                seconds.append(time.perf_counter() - started)
                reward = np.asarray(r.per_context_reward)
                memo[seed, lr] = reward - s.kl_coef * np.asarray(r.per_context_kl), reward
            fit, reward = memo[seed, lr]
            return fit[part], reward[part]

        def fitness(seed: int, lr: float, part: slice) -> np.ndarray:
            return scores(seed, lr, part)[0]

        try:
            for k in ks:
                choosing = tuning_seeds(0, k) or [0]
                sweep = {lr: float(np.mean([fitness(t, lr, search).mean() for t in choosing])) for lr in lrs}
                rates[k][name] = max(sweep, key=sweep.get)
                sweeps[k][name] = {f"{lr:g}": round(v, 5) for lr, v in sweep.items()}
                fresh = [scores(FRESH + i, rates[k][name], confirm) for i in range(seeds)]
                arms[k][name] = ArmScores(np.stack([f for f, _ in fresh]), np.stack([r for _, r in fresh]))
        except Exception as err:  # noqa: BLE001 - a reference that fails at every rate is reported, not fatal
            print(f"  {name}: failed ({err})")
            for k in ks:
                arms[k].pop(name, None)
                rates[k].pop(name, None)
            continue
    rows = []
    for k, used in ((k, n) for k in ks for n in sorted(counts or [seeds])):
        cal = calibrate({name: ArmScores(a.fitness[:used], a.score[:used]) for name, a in arms[k].items()},
                        family=family, threshold=threshold)
        order = sorted(cal.means, key=lambda n: -cal.means[n])
        print(f"\n{preset} {overrides or ''} tune_seeds={k}: {len(arms[k])} references x {used} seeds, "
              f"{confirm.stop - confirm.start} confirm contexts, {np.median(seconds):.2f} s per fine-tune "
              f"(median of {len(seconds)})")
        vs = {p.candidate: p for p in cal.vs_strongest}
        for n in order:
            p = vs.get(n)
            print(f"  {n:12s} lr {rates[k][n]:<6g} {cal.means[n]:.4f}"
                  + (f"  {p.delta:+.4f} (MDE {p.mde_family:.4f})" if p else "  strongest"))
        gap = cal.gap if cal.gap is not None else float("nan")
        mean_fresh = float(np.mean(list(cal.means.values())))
        seeds_only = varying_share(arms[k][cal.strongest].score[:used], threshold)
        print(f"  DPO -> best other {gap:+.4f} (a quarter {gap / 4:.4f}); MDE vs strongest {cal.mde_vs_strongest:.4f}"
              f" (gap/MDE {gap / cal.mde_vs_strongest:.2f}); spread {cal.spread:.3f} = {cal.spread_in_mde:.1f} x MDE;"
              f" references' mean fresh fitness at their chosen rate {mean_fresh:.4f}")
        print(f"  (i) contexts whose exact reward varies over the {cal.fine_tunes} fresh fine-tunes "
              f"(SD > {threshold:g}): {cal.varying_score:.1%} "
              f"(per-context fitness {cal.varying_fitness:.1%}); median SD {cal.median_sd:.4f}; over "
              f"{cal.strongest}'s {used} seeds alone {seeds_only:.1%}")
        rows.append({"preset": preset, "overrides": overrides, "seeds": used, "tune_seeds": k, "lrs": list(lrs),
                     "rates": rates[k], "sweeps": sweeps[k], "means": cal.means, "strongest": cal.strongest,
                     "gap": cal.gap, "mde_vs_strongest": cal.mde_vs_strongest, "spread_in_mde": cal.spread_in_mde,
                     "mean_fresh": mean_fresh, "seconds_per_fine_tune": float(np.median(seconds)),
                     "threshold": threshold, "varying_score": cal.varying_score,
                     "varying_fitness": cal.varying_fitness, "median_sd": cal.median_sd,
                     "varying_score_strongest_seeds": seeds_only})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="label_noise,mixed_quality,shifted_support,deterministic,ties,clean")
    parser.add_argument("--losses", default=",".join(available()))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--seed-counts", default=None,
                        help="fresh-seed counts reported side by side, comma-separated, each at most --seeds (nested: "
                             "the first n fresh seeds; default: --seeds alone)")
    parser.add_argument("--family", type=int, default=6, help="Holm family of the default confirmation (2 x top_k)")
    parser.add_argument("--set", action="append", default=[], help="a setting field for every preset, KEY=VALUE")
    parser.add_argument("--tune-seeds", default=None,
                        help="tuning seeds the rate is chosen on, comma-separated counts measured side by side "
                             "(0: seed 0 itself; default: the tier's training.tune_seeds)")
    parser.add_argument("--lrs", default=",".join(f"{lr:g}" for lr in LRS), help="the rate grid")
    parser.add_argument("--json", default=None, help="write the rows here")
    parser.add_argument("--threshold", type=float, default=VARY_THRESHOLD,
                        help="per-context SD over fine-tunes that 'varies' (figure i)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest and leaves the other core to the machine
    overrides = {k: _value(v) for k, v in (item.split("=", 1) for item in args.set)}
    ks = [int(k) for k in args.tune_seeds.split(",")] if args.tune_seeds else [tier_tune_seeds()]
    lrs = tuple(float(lr) for lr in args.lrs.split(","))
    counts = [int(n) for n in args.seed_counts.split(",")] if args.seed_counts else None
    if counts and max(counts) > args.seeds:
        parser.error("--seed-counts may not exceed --seeds")
    rows = []
    for spec in (p for p in args.presets.split(",") if p):
        name, *fields = spec.split("+")
        own = {k: _value(v) for k, v in (f.split("=", 1) for f in fields)}
        rows.extend(scan(name, [n for n in args.losses.split(",") if n], args.seeds, lrs, args.family,
                         {**overrides, **own}, ks, counts, args.threshold))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
