"""Per-candidate time split and framework overhead, measured through the real loop machinery.

Runs N candidates (reference losses, round robin) through the evaluation cascade with a warm
sandboxed worker, exactly as ``discover`` does, and splits each candidate's wall time (as seen by
the main process) into: numeric checks, optimisation steps (forward/backward/optimizer, timed
inside TRL's loop), scoring (generation + KL), and overhead = everything else (IPC, trainer
reset, TRL/Trainer bookkeeping, archive writes). Overhead is reported as a share of the compute
time (steps + scoring), the issue's definition.

    python benchmarks/candidate_overhead.py --n 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from discopop.archive import Archive
from discopop.config.compose import compose_settings
from discopop.execution.factory import make_executor
from discopop.fitness.tuning import LrProtocol
from discopop.proposers.reference import available, reference_candidate
from discopop.search.cascade import Evaluator
from discopop.search.loop import worker_spec
from discopop.tasks import load_task


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg, _ = compose_settings(["wandb.mode=disabled", *args.overrides])
    load_task(cfg.task)
    executor = make_executor(cfg.executor, worker_spec(cfg))
    started = time.perf_counter()
    executor.warm_up()
    warm = time.perf_counter() - started
    archive = Archive(Path(tempfile.mkdtemp()) / "archive.sqlite")
    evaluator = Evaluator(archive, executor, seed=0, protocol=LrProtocol.from_config(cfg.training))
    names = available()
    split = {"wall": [], "check": [], "steps": [], "score": [], "overhead": []}
    for i in range(args.n):
        cand = reference_candidate(names[i % len(names)])
        cand.name = f"{cand.name}_{i}"
        cand.code = cand.code + f"\n_RUN = {i}\n"  # distinct code hash; same function
        row = archive.get(archive.add(cand, 1))
        t0 = time.perf_counter()
        archive.discard_rows(keep=[row.id])  # no probe duplicates
        (outcome,) = list(evaluator.evaluate([row]))
        wall = time.perf_counter() - t0
        secs = outcome.metrics["seconds"]
        split["wall"].append(wall)
        split["check"].append(secs.get("check", 0.0))
        split["steps"].append(secs.get("steps", 0.0))
        split["score"].append(secs.get("score", 0.0))
        split["overhead"].append(wall - secs.get("steps", 0.0) - secs.get("score", 0.0))
    executor.close()
    mean = {k: statistics.fmean(v) for k, v in split.items()}
    compute = mean["steps"] + mean["score"]
    print(f"worker warm-up (once per run): {warm:.1f} s")
    print(f"per candidate over {args.n}: wall {mean['wall']:.2f} s = steps {mean['steps']:.2f} + scoring "
          f"{mean['score']:.2f} + overhead {mean['overhead']:.2f} (of which checks {mean['check']:.3f})")
    print(f"framework overhead / compute = {mean['overhead']:.2f} / {compute:.2f} = {mean['overhead'] / compute:.1%}")


if __name__ == "__main__":
    main()
