"""What contract v2's richer inputs cost per training step, against the four-input contract (issue 28).

Two losses that train identically: DPO (v1: four log-probs, a ``FORWARD`` frame) and the same DPO declaring
``chosen_lengths``, ``rejected_lengths`` and ``chosen_nll`` and adding ``0.0 *`` them (v2: the trainer derives
the lengths and the NLL from TRL's batch, the oracle gets a ``FORWARD2`` with three more tensors and sends the
NLL's gradient back). Both through a real loss oracle with one round trip per step, on one ``FineTuner`` (same
task, weights, seed, data), interleaved run by run so machine load hits both alike. Reported: the mean seconds
per training step of each (``TrainResult.step_seconds / steps``: the steps only, not the scoring), their ratio,
and whether the two fitnesses are bit-identical (they must be: the extra terms are exactly zero). ``--calls N``
also times the loss alone, as a step calls it: the v2 inputs derived from per-token log-probs (the trainer's
``length_inputs``), one fused forward + backward through the oracle, N times per arm, interleaved.

    python benchmarks/contract_v2_overhead.py --n 6 task.sft.steps=150 task.sft.n_layer=1 task.sft.n_embd=32 ...
    python benchmarks/contract_v2_overhead.py --n 8 training.max_pairs=512 training.epochs=1   # the default task
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from discopop.config.compose import compose_settings
from discopop.contract.inputs import call_loss
from discopop.contract.losses import static_check
from discopop.dpo_trainer import length_inputs
from discopop.fitness.training import FineTuner
from discopop.proposers.reference import reference_candidate
from discopop.sandbox import Limits
from discopop.sandbox.oracle_supply import OracleSupply
from discopop.sandbox.remote_loss import OracleLink, RemoteLoss
from discopop.tasks import load_task

DPO_V2 = '''import torch.nn.functional as F


def dpo_v2(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
           chosen_lengths, rejected_lengths, chosen_nll, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho) + 0.0 * (chosen_nll + chosen_lengths + rejected_lengths)
'''


def train(fine_tuner: FineTuner, code: str, oracles: OracleSupply, timeout: float) -> tuple[float, float]:
    """(seconds per training step, fitness) of one fine-tune with ``code`` in a fresh oracle."""
    oracle = oracles.take()
    try:
        link = OracleLink(oracle.sock, call_timeout=timeout)
        link.load(code)
        result = fine_tuner.run(RemoteLoss(link, inputs=static_check(code).inputs), seed=0)
    finally:
        oracle.close()
    return result.step_seconds / max(1, result.steps), result.score.fitness


def loss_calls(code: str, oracles: OracleSupply, calls: int, batch: int = 32, tokens: int = 8) -> float:
    """Median seconds of one training step's loss work (v2 inputs from per-token log-probs, forward + backward)."""
    oracle = oracles.take()
    gen = torch.Generator().manual_seed(0)
    per_token = (-torch.rand(2 * batch, tokens, generator=gen)).requires_grad_(True)
    mask = torch.ones(2 * batch, tokens)
    refs = -torch.rand(2, batch, generator=gen) * tokens
    times = []
    try:
        link = OracleLink(oracle.sock, call_timeout=30.0)
        link.load(code)
        fn = RemoteLoss(link, inputs=static_check(code).inputs)
        for _ in range(calls):
            started = time.perf_counter()
            chosen, rejected = per_token.sum(dim=1).chunk(2)
            available = {"policy_chosen_logps": chosen, "policy_rejected_logps": rejected,
                         "reference_chosen_logps": refs[0], "reference_rejected_logps": refs[1]}
            if len(fn.discopop_inputs) > 4:
                available.update(length_inputs(per_token, mask, chosen.dtype))
            call_loss(fn, available, 0.1).mean().backward()
            times.append(time.perf_counter() - started)
    finally:
        oracle.close()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=6, help="fine-tunes per arm")
    parser.add_argument("--calls", type=int, default=0, help="also time the loss alone, this many calls per arm")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg, _ = compose_settings(["wandb.mode=disabled", *args.overrides])
    fine_tuner = FineTuner(load_task(cfg.task), cfg.training, Path(tempfile.mkdtemp()))
    timeout = float(cfg.training.oracle_timeout)
    arms = {"v1 (dpo)": reference_candidate("dpo").code, "v2 (dpo + 0 * lengths, nll)": DPO_V2}
    oracles = OracleSupply(Limits())
    oracles.prespawn()
    per_step: dict[str, list[float]] = {arm: [] for arm in arms}
    fitness: dict[str, set[float]] = {arm: set() for arm in arms}
    try:
        for code in arms.values():  # untimed warm-up
            train(fine_tuner, code, oracles, timeout)
        for i in range(args.n):
            order = list(arms) if i % 2 == 0 else list(reversed(arms))
            for arm in order:
                seconds, fit = train(fine_tuner, arms[arm], oracles, timeout)
                per_step[arm].append(seconds)
                fitness[arm].add(fit)
            print(f"run {i}: " + ", ".join(f"{arm} {per_step[arm][-1] * 1e3:.1f} ms/step" for arm in arms), flush=True)
    finally:
        oracles.close()
    v1, v2 = (statistics.median(per_step[arm]) for arm in arms)
    print(f"median ms per step over {args.n} runs: v1 {v1 * 1e3:.2f}, v2 {v2 * 1e3:.2f}, ratio v2/v1 {v2 / v1:.3f}")
    # each run's two arms ran back to back, so their ratio cancels most of the load drift between runs
    paired = [b / a for a, b in zip(*per_step.values(), strict=True)]
    print(f"paired ratios v2/v1 per run: {', '.join(f'{r:.3f}' for r in paired)}; "
          f"median {statistics.median(paired):.3f}, geometric mean {statistics.geometric_mean(paired):.3f}")
    if args.calls:
        oracles = OracleSupply(Limits())
        oracles.prespawn()
        try:
            alone: dict[str, list[float]] = {arm: [] for arm in arms}
            for _ in range(3):
                for arm, code in arms.items():
                    alone[arm].append(loss_calls(code, oracles, args.calls))
        finally:
            oracles.close()
        a, b = (statistics.median(alone[arm]) for arm in arms)
        print(f"the loss alone (batch 32, 8 tokens, forward + backward via the oracle), median of 3 x {args.calls}: "
              f"v1 {a * 1e3:.3f} ms, v2 {b * 1e3:.3f} ms, ratio {b / a:.3f}")
    print(f"fitness bit-identical: {fitness['v1 (dpo)'] == fitness['v2 (dpo + 0 * lengths, nll)']} "
          f"({sorted(fitness['v1 (dpo)'])} vs {sorted(fitness['v2 (dpo + 0 * lengths, nll)'])})")


if __name__ == "__main__":
    main()
