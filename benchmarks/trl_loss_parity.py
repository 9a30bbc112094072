"""Loss-level parity of the proposals/ files with TRL's ``loss_type`` catalogue: a table for the closing note.

For each case of ``tests/trl_losses.py`` (a TRL config and the proposals/ file that should compute the same loss),
TRL's own ``DPOTrainer._compute_loss`` and ours are evaluated on the same float64 batch of the four log-probs, at
each beta and seed; the table gives the max |loss TRL - loss ours| and the max |gradient difference| over the four
inputs, beside the largest gradient entry (the scale the differences compare against). The last row ("differs")
is TRL's length-normalised IPO against ours at the same beta: what the gap looks like when the two differ.
Training-level parity (same parameters after a few steps) is ``benchmarks/trl_parity.py``.

    python benchmarks/trl_loss_parity.py [--betas 0.1 0.3 1.0] [--seeds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from transformers.utils import logging as hf_logging  # noqa: E402
from trl_losses import CASES, NOT_COMPARED, Case, compare, trl_trainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--betas", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    parser.add_argument("--seeds", type=int, default=3, help="batches per beta (16 pairs each)")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    ipo = next(c for c in CASES if c.label.startswith("ipo (L=") and c.tokens > 1)
    rows = [(c, c) for c in CASES] + [(Case(f"{ipo.label}, same beta", ipo.trl, "ipo", tokens=ipo.tokens,
                                            note="differs"), ipo)]
    start = time.perf_counter()
    print(f"{'TRL loss_type (config)':34} {'proposals/ file':26} {'mapping':24} {'max|dloss|':>10} {'max|dgrad|':>10} "
          f"{'max|grad|':>9}")
    for case, config_of in rows:
        worst = [0.0, 0.0, 0.0]
        for beta in args.betas:
            trainer = trl_trainer(beta, **config_of.trl)
            for seed in range(args.seeds):
                worst = [max(a, b) for a, b in zip(worst, compare(case, trainer, seed=seed, beta=beta), strict=True)]
        consts = ",".join(f"{k}={v:g}" for k, v in case.constants.items())
        flip = f"flip={case.flip_rate:g}" if case.flip_rate is not None else ""
        ours = " ".join(x for x in (case.reference, consts, flip) if x)
        print(f"{case.label:34} {ours:26} {case.note:24} {worst[0]:10.1e} {worst[1]:10.1e} {worst[2]:9.2g}")
    print(f"{len(CASES)} comparisons, betas {args.betas}, {args.seeds} batches each, float64, "
          f"{time.perf_counter() - start:.0f} s")
    for name, why in NOT_COMPARED.items():
        print(f"not compared: {name}: {why}")


if __name__ == "__main__":
    main()
