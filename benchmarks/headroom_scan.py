"""Is there headroom the pairs carry? Best reference vs what is computable from the same pairs, per setting.

Why (issue 24): on ``narrow_support`` the best reference (IPO) sits below the in-class policy fitted to the *true*
reward, but a search can only find what the preference pairs say. A setting is a good testbed for the search only if
(a) losses of different shape separate there and (b) something computable from the pairs alone beats the best
reference by several MDE, proof that a better loss exists. Per setting (``--settings``, each ``preset+FIELD=VALUE``)
this prints and stores, on the confirming contexts (exact scores, fitness = reward - kl_coef * KL):

* each reference of ``--losses`` at the rate a run chooses (the mean of ``training.tune_seeds`` = 3 tuning seeds,
  2000-2002, on the search contexts, from the tier's rate grid), then ``--seeds`` fresh seeds (1000, ...): the best
  of them is the "best reference" (in process: trusted references only, as ``preset_gaps.py``);
* ``pairs pipeline`` (``fitness.pairs_ceiling``): a Bradley-Terry model linear in the features fitted to a seed's
  pairs (``M``, L2 ``lam``), then the policy ``W = c * M / beta`` (c = 1: DPO's converged solution, which at
  ``kl_coef = beta * T`` is the exact in-class maximiser of ``E[r_hat] - kl_coef * KL`` on every context), ``(lam,
  c)`` chosen as a run chooses a rate: on the tuning seeds' search contexts. It sees the pairs and the search
  contexts only (not the label temperature, not the true reward);
* the in-class policy fitted to the true reward (``diagnostic_headroom.fit_chosen``) and the unconstrained optimum;
* the paired comparison pipeline - best reference at ``--seeds`` fresh seeds, its MDE at the confirmation's Holm
  bar (family 6) and the ratio; and the tier's MDE vs the strongest reference (``fitness.calibration``).

    python benchmarks/headroom_scan.py --settings narrow_support,clean+pairs_per_context=16 --seeds 5 \
        --out benchmarks/results/cpu-diagnostic-tier/headroom_scan/scan
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark's ceilings
from diagnostic_headroom import fit_chosen, pairs_pipeline, unconstrained  # noqa: E402

from discopop.contract.losses import load_loss  # noqa: E402
from discopop.fitness.calibration import ArmScores, calibrate, pair_mde  # noqa: E402
from discopop.fitness.diagnostic_tune import fine_tune, tuning_seeds  # noqa: E402
from discopop.proposers.reference import reference_candidate  # noqa: E402
from discopop.tasks.diagnostic import DiagnosticSetting, flip_rate, setting, split_contexts, world  # noqa: E402

FRESH = 1000  # the first fresh seed, as a confirmation's
LRS = (0.003, 0.01, 0.03, 0.1, 0.3)  # the tier's lr_grid (conf/training/diagnostic.yaml)
TUNE = 3  # the tier's training.tune_seeds
FAMILY = 6  # Holm family of the default confirmation (2 x top_k)
LOSSES = "dpo,ipo,bco_pair,nca_pair,cell,hinge,dbaql"
L2S = (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def _value(text: str) -> float | int | tuple[float, ...]:
    if "/" in text:
        return tuple(float(part) for part in text.split("/"))
    return int(text) if text.lstrip("-").isdigit() else float(text)


def parse_setting(spec: str, extra_confirm: int) -> DiagnosticSetting:
    """``preset+FIELD=VALUE+...`` with the tier's confirming contexts."""
    name, *items = spec.split("+")
    return setting(name, extra_confirm_contexts=extra_confirm,
                   **{k: _value(v) for k, v in (item.split("=", 1) for item in items)})


def pipeline(s: DiagnosticSetting, fresh: list[int]) -> tuple[np.ndarray, dict]:
    """Fresh seeds x confirming contexts of the pairs pipeline, ``(penalty, scale)`` chosen on the tuning seeds."""
    scores, choice = pairs_pipeline(s, fresh, TUNE)
    return scores, {"lam": choice.penalty, "scale": choice.scale, "edge": choice.at_edge}


def references(s: DiagnosticSetting, losses: list[str], fresh: list[int],
               designed: dict[str, str] | None = None) -> tuple[dict[str, ArmScores], dict]:
    """Each loss at the rate chosen on the tuning seeds' search contexts, then the fresh seeds (confirming).
    ``designed``: name -> source of a hand-written (trusted, our own) loss given the same protocol."""
    search, confirm = split_contexts(s, "search"), split_contexts(s, "confirm")
    arms, rates = {}, {}
    sources = {name: reference_candidate(name, flip_rate(s)).code for name in losses} | (designed or {})
    for name, code in sources.items():
        fn = load_loss(code)
        try:
            sweep = {lr: float(np.mean([np.mean(fine_tune(fn, s, seed=t, lr=lr).per_context[search])
                                        for t in tuning_seeds(0, TUNE)])) for lr in LRS}
            rates[name] = max(sweep, key=sweep.get)
            runs = [fine_tune(fn, s, seed=seed, lr=rates[name]) for seed in fresh]
        except Exception as err:  # noqa: BLE001 - a reference that fails is reported, not fatal
            print(f"  {name}: failed ({err})", flush=True)
            continue
        arms[name] = ArmScores(np.stack([np.asarray(r.per_context)[confirm] for r in runs]),
                               np.stack([np.asarray(r.per_context_reward)[confirm] for r in runs]))
    return arms, rates


def scan(spec: str, losses: list[str], seeds: int, extra_confirm: int, designed: dict[str, str] | None = None) -> dict:
    """One setting's row (see the module docstring); ``designed`` losses are compared, never the best reference.
    With no ``losses``: the ceilings and the pipeline only (no fine-tune: a cheap first pass over many settings)."""
    started = time.perf_counter()
    s = parse_setting(spec, extra_confirm)
    w, confirm = world(s), split_contexts(s, "confirm")
    fresh = [FRESH + i for i in range(seeds)]
    pipe, chosen = pipeline(s, fresh)
    in_class, l2 = fit_chosen(s, w.train_reward, L2S)
    row = {
        "setting": spec, "seeds": seeds, "confirming_contexts": confirm.stop - confirm.start,
        "kl_coef": s.kl_coef, "beta": s.beta, "flip_rate": flip_rate(s),
        "reference_policy": float((w.eval_ref[confirm].exp() * w.eval_reward[confirm]).sum(dim=1).mean()),
        "unconstrained": float(unconstrained(w.eval_ref[confirm], w.eval_reward[confirm], s.kl_coef).mean()),
        "in_class_true": in_class, "in_class_l2": l2,
        "pipeline": float(pipe.mean()), "pipeline_sd_over_seeds": float(pipe.mean(axis=1).std(ddof=1)),
        "pipeline_choice": chosen,
    }
    print(f"\n{spec}: kl_coef {s.kl_coef}, flip rate {row['flip_rate']:.3f}, {seeds} fresh seeds, "
          f"{row['confirming_contexts']} confirming contexts")
    print(f"  reference policy {row['reference_policy']:.4f}; in-class true reward {in_class:.4f} (L2 {l2:g}); "
          f"unconstrained {row['unconstrained']:.4f}")
    print(f"  pairs pipeline {row['pipeline']:.4f} (lam {chosen['lam']:g}, c {chosen['scale']:.3g}"
          f"{', grid edge' if chosen['edge'] else ''}; SD over seeds {row['pipeline_sd_over_seeds']:.4f})", flush=True)
    names = losses + (["rdpo"] if losses and flip_rate(s) > 0 else [])
    if not names:
        row["seconds"] = time.perf_counter() - started
        return row
    arms, rates = references(s, names, fresh, designed)
    own = {n: arms.pop(n) for n in (designed or {}) if n in arms}
    cal = calibrate(arms, family=FAMILY)
    best = cal.strongest
    comp = pair_mde("pipeline", best, pipe, arms[best].fitness, FAMILY)
    row.update({
        "means": cal.means, "rates": rates, "best_reference": best, "best_score": cal.means[best],
        "dpo": cal.means.get("dpo"), "spread": cal.spread, "mde_vs_strongest": cal.mde_vs_strongest,
        "spread_in_mde": cal.spread / cal.mde_vs_strongest,
        "pipeline_delta": comp.delta, "pipeline_mde": comp.mde_family,
        "pipeline_ratio": comp.delta / comp.mde_family, "ratio_tier_mde": comp.delta / cal.mde_vs_strongest,
        "seconds": time.perf_counter() - started,
    })
    for name, arm in own.items():
        c = pair_mde(name, best, arm.fitness, arms[best].fitness, FAMILY)
        row.setdefault("designed", {})[name] = {"rate": rates[name], "mean": float(arm.fitness.mean()),
                                                "delta": c.delta, "mde": c.mde_family}
    for name in sorted(cal.means, key=lambda n: -cal.means[n]):
        print(f"  {name:10s} lr {rates[name]:<6g} {cal.means[name]:.4f}")
    print(f"  pipeline - {best} {comp.delta:+.4f}, MDE {comp.mde_family:.4f}: {row['pipeline_ratio']:+.2f} x MDE; "
          f"tier MDE vs strongest {cal.mde_vs_strongest:.4f} ({row['ratio_tier_mde']:+.2f} x); spread "
          f"{cal.spread:.4f} = {row['spread_in_mde']:.1f} x MDE ({row['seconds']:.0f} s)", flush=True)
    for name, d in row.get("designed", {}).items():
        print(f"  designed {name} lr {d['rate']:g}: {d['mean']:.4f}, - {best} {d['delta']:+.4f} (MDE {d['mde']:.4f})",
              flush=True)
    return row


def table(rows: list[dict]) -> str:
    """The scan as a plain-text table (pipeline-only rows leave the reference columns empty)."""
    head = ("setting", "best ref (rate)", "score", "DPO", "spread/MDE", "pipeline", "(lam, c)", "in-class true",
            "MDE pipe-best", "(pipe-best)/MDE", "tier MDE")
    lines = [" | ".join(head)]
    for r in rows:
        refs = "best_reference" in r
        lines.append(" | ".join([
            r["setting"], f"{r['best_reference']} ({r['rates'][r['best_reference']]:g})" if refs else "-",
            f"{r['best_score']:.4f}" if refs else "-", f"{r['dpo']:.4f}" if r.get("dpo") is not None else "-",
            f"{r['spread_in_mde']:.1f}" if refs else "-", f"{r['pipeline']:.4f}",
            f"({r['pipeline_choice']['lam']:g}, {r['pipeline_choice']['scale']:.3g})", f"{r['in_class_true']:.4f}",
            f"{r['pipeline_mde']:.4f}" if refs else "-", f"{r['pipeline_ratio']:+.2f}" if refs else "-",
            f"{r['mde_vs_strongest']:.4f}" if refs else "-"]))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", default="narrow_support", help="comma-separated preset+FIELD=VALUE specs")
    parser.add_argument("--losses", default=LOSSES,
                        help="references (rDPO at the true flip rate is added where labels flip; empty: no fine-tune)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--extra-confirm-contexts", type=int, default=3840, help="the tier's default")
    parser.add_argument("--designed", action="append", default=[],
                        help="NAME=PATH of a hand-written loss (our own code: it runs in this process)")
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.txt")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest and leaves the other core to the machine
    designed = {n: Path(path).read_text() for n, path in (d.split("=", 1) for d in args.designed)}
    rows: list[dict] = []
    for spec in (p for p in args.settings.split(",") if p):
        rows.append(scan(spec, [n for n in args.losses.split(",") if n], args.seeds, args.extra_confirm_contexts,
                         designed))
        if args.out:  # after each setting: a long scan stopped early keeps what it measured
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(f"{args.out}.json").write_text(json.dumps(rows, indent=1))
            Path(f"{args.out}.txt").write_text(table(rows))
    print("\n" + table(rows))


if __name__ == "__main__":
    main()
