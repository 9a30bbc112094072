"""What reusing one warm trainer saves per candidate, side by side in one process.

Two FineTuners on the same task, one as the product builds it (``FineTuner.reuse_between_runs``: replayed
collated batches, no full gc between runs) and one without that reuse (``_NoReuse``, this benchmark's own
subclass), train the same loss alternately. Prints the median
wall time per candidate of each, and the framework overhead (wall - steps - scoring) of each as a
share of its compute.

    python benchmarks/reuse_speedup.py --reps 8
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from discopop.config.compose import compose_settings
from discopop.contract.losses import load_loss
from discopop.fitness.training import FineTuner
from discopop.tasks import load_task


class _NoReuse(FineTuner):
    """A fine-tuner without the reuse between runs: what every candidate would pay without it."""

    def reuse_between_runs(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=8)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg, _ = compose_settings(["wandb.mode=disabled", *args.overrides])
    task = load_task(cfg.task)
    tuners = {flag: (FineTuner if flag else _NoReuse)(task, cfg.training, Path(tempfile.mkdtemp()))
              for flag in (False, True)}
    fn = load_loss("proposals/dpo.py")
    for tuner in tuners.values():
        tuner.run(fn, seed=0)  # first run of a seed collates its batches: not what later candidates pay
    walls: dict[bool, list[float]] = {False: [], True: []}
    overheads: dict[bool, list[float]] = {False: [], True: []}
    computes: dict[bool, list[float]] = {False: [], True: []}
    fitness: dict[bool, set[float]] = {False: set(), True: set()}
    for _ in range(args.reps):
        for flag, tuner in tuners.items():
            start = time.perf_counter()
            result = tuner.run(fn, seed=0)
            wall = time.perf_counter() - start
            compute = result.step_seconds + result.score.seconds
            walls[flag].append(wall)
            computes[flag].append(compute)
            overheads[flag].append(wall - compute)
            fitness[flag].add(result.score.fitness)
    for flag in (False, True):
        over, comp = statistics.median(overheads[flag]), statistics.median(computes[flag])
        print(f"fast_reuse={flag!s:5}: wall {statistics.median(walls[flag]):.3f} s, overhead {over:.3f} s "
              f"= {over / comp:.1%} of compute {comp:.3f} s, fitness {sorted(fitness[flag])}")
    ratio = statistics.median(walls[True]) / statistics.median(walls[False])
    print(f"wall per candidate, fast_reuse on / off = {ratio:.3f}")


if __name__ == "__main__":
    main()
