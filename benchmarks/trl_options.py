"""Which shipped losses ``discopop check``/``export`` report as TRL's own ``DPOConfig`` options, and how exactly.

Runs each reference loss (trusted package code, in process) through the numeric checks at each beta, then
``report.trl_options.match_trl`` on the report, as the product does with an archived check report; prints the
config found (or none), the relative residual on the probe and the seconds the matching took.

    python benchmarks/trl_options.py --betas 0.1,0.5
"""

from __future__ import annotations

import argparse
import time

from discopop.contract.checks import check_loss
from discopop.contract.losses import load_loss
from discopop.proposers.reference import reference_candidate
from discopop.report.trl_options import match_trl

# A crossover-like weighted sum of two references: what evolution produces and TRL can express.
MIX = '''import torch.nn.functional as F


def mix(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return 0.3 * -F.logsigmoid(beta * rho) + 0.7 * F.relu(1 - beta * rho)
'''
LOSSES = ["dpo", "hinge", "lrml", "cdpo", "rdpo", "exo_pair", "nca_pair", "sppo_hard", "apo_zero", "apo_down",
          "kto_pair", "ipo", "aqfl", "padll", "cell", "pfl", "aql", "dbaql"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--betas", default="0.1,0.5")
    args = parser.parse_args()
    cases = [(name, reference_candidate(name).code) for name in LOSSES]
    cases += [("cdpo at flip rate 0.25", reference_candidate("cdpo", 0.25).code), ("0.3 dpo + 0.7 hinge", MIX)]
    for beta in (float(b) for b in args.betas.split(",")):
        print(f"beta {beta}")
        for name, code in cases:
            report = check_loss(load_loss(code), beta=beta).as_dict()
            start = time.perf_counter()
            options = match_trl(report)
            seconds = time.perf_counter() - start
            found = options.config_text() if options else "not a weighted sum of TRL loss types"
            residual = f"{options.residual:.1e}" if options else "-"
            print(f"  {name:24s} {found}  residual {residual}  ({seconds:.2f} s)")


if __name__ == "__main__":
    main()
