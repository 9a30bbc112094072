"""Which diagnostic presets separate the reference losses? A quick in-process scan of the DPO-to-best gap.

Issue 24's third figure needs a gap to resolve: on ``label_noise`` DPO sits within 0.001-0.010 of the best
reference (Bradley-Terry labels make it the labels' own MLE). This scan finds the presets where loss shape
moves the KL-priced fitness, before the slower ``task_calibration.py`` (every fine-tune through a sandboxed
oracle, as a run does) measures the chosen ones. Only the *trusted* reference losses run here, in this process
(``contract.losses.load_loss``), on ``fitness.diagnostic_tune.fine_tune`` directly, with the evaluate protocol's
choices: the rate picked from ``--lrs`` on the search contexts with seed 0, then ``--seeds`` fresh seeds
(1000, 1001, ...) at that rate scored on the confirming contexts, fitness = reward - kl_coef * KL.

    python benchmarks/preset_gaps.py --presets label_noise,mixed_quality --seeds 5
    python benchmarks/preset_gaps.py --presets label_noise --set extra_confirm_contexts=3840
    python benchmarks/preset_gaps.py --presets clean+hard_flip=0.5   # a preset with its own field overrides
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from discopop.contract.losses import load_loss
from discopop.fitness.calibration import ArmScores, calibrate
from discopop.fitness.diagnostic_tune import fine_tune
from discopop.proposers.reference import available, reference_candidate
from discopop.tasks.diagnostic import KL_COEF, flip_rate, setting, split_contexts

LRS = (0.003, 0.01, 0.03, 0.1, 0.3)  # conf/training/diagnostic.yaml's lr_grid
FRESH = 1000  # the first fresh seed, as a confirmation's


def _value(text: str) -> float | int:
    return int(text) if text.lstrip("-").isdigit() else float(text)


def scan(preset: str, losses: list[str], seeds: int, lrs: tuple[float, ...], family: int,
         overrides: dict[str, float | int]) -> dict:
    """One preset: each reference's rate, fresh-seed fitness matrices, and the calibration figures."""
    s = setting(preset, kl_coef=KL_COEF, **overrides)
    search, confirm = split_contexts(s, "search"), split_contexts(s, "confirm")
    arms, rates, seconds = {}, {}, []
    for name in losses:
        fn = load_loss(reference_candidate(name, flip_rate(s)).code)

        def per_context(seed: int, lr: float, part: slice, fn=fn) -> np.ndarray:
            started = time.perf_counter()
            r = fine_tune(fn, s, seed=seed, lr=lr)
            seconds.append(time.perf_counter() - started)
            return np.asarray(r.per_context_reward)[part] - s.kl_coef * np.asarray(r.per_context_kl)[part]

        try:
            sweep = {lr: float(per_context(0, lr, search).mean()) for lr in lrs}
        except Exception as err:  # noqa: BLE001 - a reference that fails at every rate is reported, not fatal
            print(f"  {name}: failed ({err})")
            continue
        rates[name] = max(sweep, key=sweep.get)
        fit = np.stack([per_context(FRESH + k, rates[name], confirm) for k in range(seeds)])
        arms[name] = ArmScores(fit, fit)
    cal = calibrate(arms, family=family)
    order = sorted(cal.means, key=lambda n: -cal.means[n])
    print(f"\n{preset} {overrides or ''}: {len(arms)} references x {seeds} seeds, {confirm.stop - confirm.start} "
          f"confirm contexts, {np.median(seconds):.2f} s per fine-tune (median of {len(seconds)})")
    vs = {p.candidate: p for p in cal.vs_strongest}
    for n in order:
        p = vs.get(n)
        print(f"  {n:9s} lr {rates[n]:<6g} {cal.means[n]:.4f}" + (f"  {p.delta:+.4f} (MDE {p.mde_family:.4f})" if p
                                                                   else "  strongest"))
    gap = cal.gap if cal.gap is not None else float("nan")
    print(f"  DPO -> best other {gap:+.4f} (a quarter {gap / 4:.4f}); MDE vs strongest {cal.mde_vs_strongest:.4f}; "
          f"spread {cal.spread:.3f} = {cal.spread_in_mde:.1f} x MDE")
    return {"preset": preset, "overrides": overrides, "seeds": seeds, "rates": rates, "means": cal.means,
            "strongest": cal.strongest, "gap": cal.gap, "mde_vs_strongest": cal.mde_vs_strongest,
            "spread_in_mde": cal.spread_in_mde, "seconds_per_fine_tune": float(np.median(seconds))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="label_noise,mixed_quality,shifted_support,deterministic,ties,clean")
    parser.add_argument("--losses", default=",".join(available()))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--family", type=int, default=6, help="Holm family of the default confirmation (2 x top_k)")
    parser.add_argument("--set", action="append", default=[], help="a setting field for every preset, KEY=VALUE")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest and leaves the other core to the machine
    overrides = {k: _value(v) for k, v in (item.split("=", 1) for item in args.set)}
    rows = []
    for spec in (p for p in args.presets.split(",") if p):
        name, *fields = spec.split("+")
        own = {k: _value(v) for k, v in (f.split("=", 1) for f in fields)}
        rows.append(scan(name, [n for n in args.losses.split(",") if n], args.seeds, LRS, args.family,
                         {**overrides, **own}))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
