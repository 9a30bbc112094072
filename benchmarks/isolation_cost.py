"""What the loss oracle costs: per-candidate time of the same check + train jobs, loss in-process vs remote.

Both arms run in this one process on the same ``FineTuner`` (same task, weights, seed, data order),
interleaved candidate by candidate so machine load hits both alike:

* ``in-process`` (BENCHMARK BASELINE ONLY: the old, unsafe path, kept nowhere in the product):
  ``load_loss(code)`` here, then ``check_loss(fn)`` and ``FineTuner.run(fn)``;
* ``oracle-2call`` (the path before ``executor.fused_backward``): for each of the two jobs, a fresh sandboxed
  ``discopop.sandbox.oracle`` from an :class:`~discopop.sandbox.oracle_supply.OracleSupply` (standbys pre-spawned,
  as the executor does), a :class:`~discopop.sandbox.remote_loss.RemoteLoss` on it with two round trips per
  training step (``fused=False``), the same ``check_loss`` / ``FineTuner.run``, then the oracle is killed;
* ``oracle-1call``: the same with one round trip per step (``fused=True``, the default);
* ``oracle-kept``: one round trip per step and one oracle for both jobs of the candidate (each job starts with a
  ``LOAD``), as a worker with ``executor.kept_oracles`` > 0 (the default) runs a candidate;
* ``oracle-kept-spawn``: the same with each oracle a fresh interpreter (``executor.oracle_start=spawn``); the other
  oracle arms fork theirs from a template, the default.

It also checks the arms agree (same check report, same fitness, bit for bit), since the oracle must change
nothing but where the loss's code runs. Reported: mean seconds per candidate for each arm, their ratio to
in-process, and the oracle round trips per training step.

    python benchmarks/isolation_cost.py --n 4 task.sft.steps=60 task.sft.n_layer=1 ...
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from discopop.config.compose import compose_settings
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


ROUND_TRIPS: dict[str, list[float]] = {}  # arm -> oracle round trips per training step of each fine-tune


def through_oracle(fine_tuner: FineTuner, code: str, oracles: OracleSupply, fused: bool = True,
                   kept: bool = False, arm: str = "oracle", timeout: float = 10.0) -> tuple[object, float]:
    """check + train through oracles: a fresh one per job, or with ``kept`` one for both jobs."""
    shared = oracles.take() if kept else None

    def job(body):
        oracle = shared or oracles.take()
        try:
            link = OracleLink(oracle.sock, call_timeout=timeout)
            link.load(code)
            return body(RemoteLoss(link, fused=fused))
        finally:
            if shared is None:
                oracle.close()

    def train(fn: RemoteLoss) -> float:
        before = fn.link.round_trips
        result = fine_tuner.run(fn, seed=0)
        ROUND_TRIPS.setdefault(arm, []).append((fn.link.round_trips - before) / max(1, result.steps))
        return result.score.fitness

    try:
        report = job(check_loss)
        return report, job(train)
    finally:
        if shared is not None:
            shared.close()


ARMS = {"oracle-2call": {"fused": False}, "oracle-1call": {"fused": True}, "oracle-kept": {"fused": True, "kept": True},
        "oracle-kept-spawn": {"fused": True, "kept": True, "start": "spawn"}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=4, help="candidates per arm")
    parser.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=list(ARMS), help="oracle arms to run")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg, _ = compose_settings(["wandb.mode=disabled", *args.overrides])
    task = load_task(cfg.task)
    fine_tuner = FineTuner(task, cfg.training, Path(tempfile.mkdtemp()))
    supplies = {start: OracleSupply(Limits(), start=start) for start in ("fork", "spawn")}
    timeout = float(cfg.training.oracle_timeout)  # per oracle call, as a worker waits
    for supply in supplies.values():
        supply.prespawn()

    def oracles(arm: str) -> OracleSupply:
        return supplies[ARMS[arm].get("start", "fork")]

    def options(arm: str) -> dict:
        return {key: value for key, value in ARMS[arm].items() if key != "start"}

    names = available()
    seconds: dict[str, list[float]] = {"in-process": [], **{arm: [] for arm in args.arms}}
    try:
        warm = reference_candidate(names[0]).code  # untimed: the first run of each arm pays one-off costs
        in_process(fine_tuner, warm)
        for arm in args.arms:
            through_oracle(fine_tuner, warm, oracles(arm), **options(arm), arm="warm-up", timeout=timeout)
        for i in range(args.n):
            code = reference_candidate(names[i % len(names)]).code
            started = time.perf_counter()
            local = in_process(fine_tuner, code)
            seconds["in-process"].append(time.perf_counter() - started)
            line, same = [f"in-process {seconds['in-process'][-1]:.2f} s"], True
            for arm in args.arms:
                started = time.perf_counter()
                remote = through_oracle(fine_tuner, code, oracles(arm), **options(arm), arm=arm, timeout=timeout)
                seconds[arm].append(time.perf_counter() - started)
                same = same and local[0] == remote[0] and local[1] == remote[1]
                line.append(f"{arm} {seconds[arm][-1]:.2f} s")
            print(f"{names[i % len(names)]:>10}: {', '.join(line)}, same report and fitness: {same}", flush=True)
    finally:
        for supply in supplies.values():
            supply.close()
    base = statistics.fmean(seconds["in-process"])
    print(f"per candidate (check + train) over {args.n}: in-process {base:.2f} s")
    for arm in args.arms:
        mean = statistics.fmean(seconds[arm])
        print(f"  {arm:>12}: {mean:.2f} s, ratio / in-process = {mean / base:.3f}, "
              f"oracle round trips per training step {statistics.fmean(ROUND_TRIPS[arm]):.2f}")


if __name__ == "__main__":
    main()
