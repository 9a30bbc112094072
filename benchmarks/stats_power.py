"""Size and power of the confirmation's paired test, old estimator vs new, per seed count (issue 24).

Simulates the crossed design ``d[s, p] = effect + a_s + b_p + e_sp`` (S seeds x P prompts) through its exact
sampling distribution (for Gaussian components the grand mean and the three two-way mean squares are independent,
normal and scaled chi-squared), so 20,000 draws per cell take well under a second. Three scenarios, each given as
the (seed, prompt, residual) shares of Var(mean d) at 3 seeds and 500 prompts, and the SD of the mean there; they
are modelled on the issue's account of the embedded task, not measured here:

* near-copy: a baseline close to the candidate; seed noise dominates (sd 0.0016);
* AQFL - hinge: 0/1 rewards, the residual is 41% of the variance (sd 0.0025);
* AQFL - DPO: a dissimilar baseline; the prompt term dominates (sd 0.005);
* seed 90%: where plain Satterthwaite df fail most (their df jump when the seed term comes out small).

Columns, per seed count: the rejection rate under the null ("size", target <= 5%) and the power at a few effects,
for the previous estimator (row- plus column-mean variances, df = min(S-1, P-1)), plain Satterthwaite df on the new
variance (rejected: size above 5%) and the new rule (``stats.crossed_variance``); and the median stated MDE. Run:

    python benchmarks/stats_power.py            # ~1 min on 2 cores
    python benchmarks/stats_power.py --draws 4000 --effects 0.002 0.004
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from discopop.fitness import stats, student_t

SCENARIOS = {"near-copy": ((0.6, 0.1, 0.3), 0.0016), "AQFL - hinge": ((0.3, 0.29, 0.41), 0.0025),
             "AQFL - DPO": ((0.1, 0.75, 0.15), 0.005), "seed 90% (worst for plain Satterthwaite)": ((0.9, 0.05, 0.05),
                                                                                        0.0016)}


def draw(rng: np.random.Generator, seeds: int, prompts: int, comps: tuple[float, float, float], effect: float,
         n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    va, vb, ve = comps
    df_a, df_b = seeds - 1, prompts - 1
    mean = effect + rng.normal(0.0, math.sqrt(va / seeds + vb / prompts + ve / (seeds * prompts)), n)
    ms_a = (prompts * va + ve) * rng.chisquare(df_a, n) / df_a
    ms_b = (seeds * vb + ve) * rng.chisquare(df_b, n) / df_b
    ms_e = ve * rng.chisquare(df_a * df_b, n) / (df_a * df_b)
    return mean, ms_a, ms_b, ms_e


def rules(ms_a: np.ndarray, ms_b: np.ndarray, ms_e: np.ndarray, seeds: int,
          prompts: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(se, df) per rule."""
    cells = seeds * prompts
    old = (np.sqrt((ms_a + ms_b) / cells), np.full_like(ms_a, min(seeds - 1, prompts - 1)))
    var, df = stats.crossed_variance(ms_a, ms_b, ms_e, seeds, prompts)
    df_a, df_b, df_e = seeds - 1, prompts - 1, (seeds - 1) * (prompts - 1)
    plain = (var * cells) ** 2 / (ms_a ** 2 / df_a + ms_b ** 2 / df_b + ms_e ** 2 / df_e)
    plain = np.clip(plain, min(df_a, df_b), df_a + df_b + df_e)
    return {"old": old, "satterthwaite": (np.sqrt(var), plain), "new": (np.sqrt(var), df)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draws", type=int, default=20_000)
    parser.add_argument("--prompts", type=int, default=500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[2, 3, 5, 10])
    parser.add_argument("--effects", type=float, nargs="+", default=[0.002, 0.004, 0.008])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    mc = 3 * math.sqrt(0.05 * 0.95 / args.draws)
    print(f"{args.draws} draws per cell, {args.prompts} prompts, alpha {stats.ALPHA} two-sided, one comparison "
          f"(no Holm); 3 Monte-Carlo SE of a 5% rate: {mc:.2%}")
    for name, (shares, sd) in SCENARIOS.items():
        var3 = sd ** 2
        comps = (shares[0] * var3 * 3, shares[1] * var3 * args.prompts, shares[2] * var3 * 3 * args.prompts)
        head = " | ".join(f"power {e:+.3f} old / new" for e in args.effects)
        print(f"\n{name}: shares at S=3 seed/prompt/residual {shares}, sd of the mean {sd}")
        print(f"  S | size old / Satt / new | {head} | median df new | median MDE new")
        for seeds in args.seeds:
            mean, ms_a, ms_b, ms_e = draw(rng, seeds, args.prompts, comps, 0.0, args.draws)
            by_rule = rules(ms_a, ms_b, ms_e, seeds, args.prompts)
            size = {k: np.mean(student_t.two_sided_p(mean / se, df) < stats.ALPHA) for k, (se, df) in by_rule.items()}
            powers = []
            for effect in args.effects:  # the mean squares do not depend on the mean: shift the same draws
                got = {k: np.mean(student_t.two_sided_p((mean + effect) / se, df) < stats.ALPHA)
                       for k, (se, df) in by_rule.items() if k != "satterthwaite"}
                powers.append(f"{got['old']:6.1%} / {got['new']:6.1%}".ljust(len(f"power {effect:+.3f} old / new")))
            se_new, df_new = by_rule["new"]
            mde = float(np.median(stats.minimum_detectable(se_new, df_new)))
            print(f"{seeds:3d} | {size['old']:5.1%} / {size['satterthwaite']:5.1%} / {size['new']:5.1%} | "
                  + " | ".join(powers) + f" | {np.median(df_new):13.1f} | {mde:.4f}")


if __name__ == "__main__":
    main()
