"""What the loss oracle costs: per-candidate time of the same check + train jobs, loss in-process vs remote.

Both arms run in this one process on the same ``FineTuner`` (same task, weights, seed, data order),
interleaved candidate by candidate so machine load hits both alike:

* ``in-process`` (BENCHMARK BASELINE ONLY: the old, unsafe path, kept nowhere in the product):
  ``load_loss(code)`` here, then ``check_loss(fn)`` and ``FineTuner.run(fn)``;
* ``oracle`` (the product's path): for each of the two jobs, a fresh sandboxed ``discopop.sandbox.oracle``
  from an :class:`~discopop.sandbox.oracle_supply.OracleSupply` (one standby pre-spawned, as the executor
  does), a :class:`~discopop.sandbox.remote_loss.RemoteLoss` on it, the same ``check_loss`` / ``FineTuner.run``,
  then the oracle is killed.

It also checks the two arms agree (same check report, same fitness), since the oracle must change
nothing but where the loss's code runs. Reported: mean seconds per candidate for each arm and
their ratio.

    python benchmarks/isolation_cost.py --n 4 task.sft.steps=60 task.sft.n_layer=1 ...
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from discopop.config.compose import compose
from discopop.contract.checks import check_loss
from discopop.contract.losses import load_loss
from discopop.fitness.training import FineTuner
from discopop.proposers.reference import available, reference_candidate
from discopop.sandbox import Limits
from discopop.sandbox.oracle_supply import OracleSupply
from discopop.sandbox.remote_loss import OracleLink, RemoteLoss
from discopop.tasks import load_task


def in_process(fine_tuner: FineTuner, code: str) -> tuple[object, float]:
    """BENCHMARK BASELINE ONLY: candidate code loaded into the trusted process (what the oracle replaces)."""
    fn = load_loss(code)
    report = check_loss(fn)
    return report, fine_tuner.run(fn, seed=0).score.fitness


def through_oracle(fine_tuner: FineTuner, code: str, oracles: OracleSupply) -> tuple[object, float]:
    def job(body):
        oracle = oracles.take()
        try:
            link = OracleLink(oracle.sock)
            link.load(code)
            return body(RemoteLoss(link))
        finally:
            oracle.close()

    report = job(check_loss)
    return report, job(lambda fn: fine_tuner.run(fn, seed=0).score.fitness)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=4, help="candidates per arm")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg, _ = compose(["wandb.mode=disabled", *args.overrides])
    task = load_task(cfg["task"])
    fine_tuner = FineTuner(task, cfg["training"], Path(tempfile.mkdtemp()))
    oracles = OracleSupply(Limits())
    oracles.prespawn()
    names = available()
    seconds: dict[str, list[float]] = {"in-process": [], "oracle": []}
    try:
        warm = reference_candidate(names[0]).code  # untimed: the first run of each arm pays one-off costs
        in_process(fine_tuner, warm)
        through_oracle(fine_tuner, warm, oracles)
        for i in range(args.n):
            code = reference_candidate(names[i % len(names)]).code
            started = time.perf_counter()
            local = in_process(fine_tuner, code)
            seconds["in-process"].append(time.perf_counter() - started)
            started = time.perf_counter()
            remote = through_oracle(fine_tuner, code, oracles)
            seconds["oracle"].append(time.perf_counter() - started)
            same = local[0] == remote[0] and local[1] == remote[1]
            print(f"{names[i % len(names)]:>10}: in-process {seconds['in-process'][-1]:.2f} s, "
                  f"oracle {seconds['oracle'][-1]:.2f} s, same report and fitness: {same}", flush=True)
    finally:
        oracles.close()
    base, oracle = statistics.fmean(seconds["in-process"]), statistics.fmean(seconds["oracle"])
    print(f"per candidate (check + train) over {args.n}: in-process {base:.2f} s, oracle {oracle:.2f} s, "
          f"ratio oracle / in-process = {oracle / base:.3f}")


if __name__ == "__main__":
    main()
