"""Can a rate undo a loss's shape? Each loss's fresh-seed fitness along a fine rate grid (its stopping points).

Why: on the fast tier the learning rate acts as early stopping (a fixed number of Adam steps), so a DPO-to-best gap
measured at the tuned rates (``preset_gaps.py``) may be the coarse grid catching one loss between two grid points,
not its shape. Here every loss is scored at every rate of a finer grid on the same fresh seeds (1000, 1001, ...) and
the confirming contexts; the best over the grid is the loss's best stopping point *chosen with hindsight* (an upper
bound no tuning protocol reaches). A loss that beats DPO's best stopping point wins by its path, not its rate.
Trusted reference losses only, in process (``contract.losses.load_loss``), as ``preset_gaps.py`` runs them.

    python benchmarks/stopping_points.py --preset narrow_support --losses dpo,ipo,hinge --seeds 5
    python benchmarks/stopping_points.py --preset clean+hard_flip=0.3+hard_share=0.5 --losses dpo,nca_pair
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from discopop.contract.losses import load_loss
from discopop.fitness.diagnostic_tune import fine_tune
from discopop.proposers.reference import reference_candidate
from discopop.tasks.diagnostic import flip_rate, setting, split_contexts

LRS = (0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.06, 0.1)
FRESH = 1000  # the first fresh seed, as a confirmation's


def _value(text: str) -> float | int | tuple[float, ...]:
    if "/" in text:
        return tuple(float(part) for part in text.split("/"))
    return int(text) if text.lstrip("-").isdigit() else float(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="narrow_support", help="a preset, optionally +FIELD=VALUE ...")
    parser.add_argument("--losses", default="dpo,ipo")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--extra-confirm-contexts", type=int, default=3840, help="the tier's default")
    parser.add_argument("--lrs", default=",".join(f"{lr:g}" for lr in LRS))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest and leaves the other core to the machine
    name, *fields = args.preset.split("+")
    s = setting(name, extra_confirm_contexts=args.extra_confirm_contexts,
                **{k: _value(v) for k, v in (f.split("=", 1) for f in fields)})
    confirm = split_contexts(s, "confirm")
    lrs = [float(lr) for lr in args.lrs.split(",")]
    rows = {}
    for loss in args.losses.split(","):
        fn = load_loss(reference_candidate(loss, flip_rate(s)).code)
        curve = []
        for lr in lrs:
            per_seed = []
            for i in range(args.seeds):
                r = fine_tune(fn, s, seed=FRESH + i, lr=lr)
                fit = np.asarray(r.per_context_reward) - s.kl_coef * np.asarray(r.per_context_kl)
                per_seed.append(float(fit[confirm].mean()))
            curve.append(float(np.mean(per_seed)))
        rows[loss] = dict(zip((f"{lr:g}" for lr in lrs), curve, strict=True))
        best = int(np.argmax(curve))
        print(f"{args.preset} {loss:12s} " + " ".join(f"{lr:g}:{v:.4f}" for lr, v in zip(lrs, curve, strict=True))
              + f"  best {curve[best]:.4f} at {lrs[best]:g}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"preset": args.preset, "seeds": args.seeds, "curves": rows}, indent=1))


if __name__ == "__main__":
    main()
