"""Loss-level parity of the contract-v2 references with TRL's own code: a table for the closing note (issue 28).

For each case of ``tests/test_contract_v2_parity.py`` (SimPO against CPO's ``simpo``, ORPO against ORPOTrainer's
odds ratio plus the NLL, RPO against DPO's ``["sigmoid", "sft"]``, TRL's ``sigmoid_norm`` and its length-normalised
``ipo``), TRL's code and our trainer's ``_compute_loss`` on the same stand-in forward pass (float64, answers of 1 to
6 tokens), at each seed:
max |loss TRL - loss ours|, max |gradient difference| over the four log-prob inputs, and the largest TRL gradient
entry (the scale the differences compare against).

    python benchmarks/contract_v2_parity.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_contract_v2_parity import CASES, compare, our_trainer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    ours = our_trainer()
    print(f"{'case':<29} {'max |dloss|':>12} {'max |dgrad|':>12} {'max |grad|':>11}")
    for label in CASES:
        rows = [compare(ours, label, seed) for seed in range(args.seeds)]
        print(f"{label:<29} {max(r[0] for r in rows):>12.1e} {max(r[1] for r in rows):>12.1e} "
              f"{max(r[2] for r in rows):>11.3f}")


if __name__ == "__main__":
    main()
