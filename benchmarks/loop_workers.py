"""Candidates per hour with 1 and 2 workers: the real loop, side by side in one invocation.

The same offline search (evolution proposer, default task, default learning-rate protocol) runs
the same number of new candidates in three arms, each on a copy of one shared archive of
baselines, so only the search is timed:

* ``1 worker``: one sandboxed worker with every core (``training.threads`` = cores), k = 1;
* ``2 workers, k=1``: two 1-thread workers, one proposal per generation (the lock-step loop:
  the second worker only helps with a candidate's own learning-rate climb);
* ``2 workers, k=auto``: two 1-thread workers, one proposal per worker per generation, all
  evaluated together (the default).

Workers are started before the clock starts (``warm_up``). Each arm's figure is candidates
finished per hour of loop time; the ratios are against ``1 worker``. ``--passes 2`` runs the arms
in the order A B C, then C B A (half the candidates each pass), so a machine whose load drifts
(other jobs sharing the cores) favours no arm. The arms' candidates are
not the same losses (the thread count changes round-off, k changes what is proposed when), so
the fine-tunes per candidate are printed too: a ratio is only fair if those are close.

    nice -n 10 python benchmarks/loop_workers.py --candidates 8 --passes 2
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console

from discopop.archive import ARCHIVE_NAME, Archive
from discopop.config.compose import resolve_run, usable_cores
from discopop.execution.factory import make_executor
from discopop.report.display import Display
from discopop.search.loop import Loop, worker_spec

BASELINES = "[dpo,hinge,pfl,aqfl]"


def run_arm(overrides: list[str], run_dir: Path, candidates: int) -> dict[str, float]:
    """Warm the arm's workers, then time ``Loop.run`` over enough generations for ``candidates`` proposals."""
    cfg, _ = resolve_run(None, None, overrides)
    k = cfg.candidates_per_generation
    generations = -(-candidates // k)
    executor = make_executor(cfg.executor, worker_spec(cfg))
    executor.warm_up()
    display = Display(0, console=Console(file=io.StringIO()), quiet=True)
    loop = Loop(cfg, run_dir, display, executor=executor)
    started = time.perf_counter()
    loop.run(generations)
    seconds = time.perf_counter() - started
    loop.archive.close()
    archive = Archive(run_dir / ARCHIVE_NAME, create=False)
    rows = archive.rows_after_generation(0)
    fine_tunes = archive.evolved_fine_tunes()
    archive.close()
    return {"candidates": len(rows), "seconds": seconds, "per_hour": len(rows) / seconds * 3600,
            "fine_tunes": fine_tunes / max(1, len(rows)), "k": k}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=8, help="new candidates per arm")
    parser.add_argument("--passes", type=int, default=2, help="passes over the arms, alternating their order")
    parser.add_argument("--cores", type=int, default=min(2, usable_cores()), help="cores the arms may use")
    parser.add_argument("overrides", nargs="*", help="config overrides for every arm (e.g. task=sorting)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="loop-workers-"))
    common = ["wandb.mode=disabled", "confirm.seeds=0", f"baselines={BASELINES}", *args.overrides]
    half = max(1, args.cores // 2)
    arms = {
        "1 worker": ["executor.workers=1", f"training.threads={args.cores}", "candidates_per_generation=1"],
        "2 workers, k=1": ["executor.workers=2", f"training.threads={half}", "candidates_per_generation=1"],
        "2 workers, k=auto": ["executor.workers=2", f"training.threads={half}", "candidates_per_generation=auto"],
    }
    try:
        print(f"baselines {BASELINES} once, shared by every arm ...", flush=True)
        shared = root / "baselines"
        shared.mkdir()
        cfg, _ = resolve_run(0, None, [*common, "executor.workers=2", f"training.threads={half}"])
        Loop(cfg, shared, Display(0, console=Console(file=io.StringIO()), quiet=True)).run(0)
        totals = {name: {"candidates": 0, "seconds": 0.0, "fine_tunes": 0.0} for name in arms}
        per_pass = max(1, args.candidates // args.passes)
        for number in range(args.passes):
            order = list(arms) if number % 2 == 0 else list(reversed(arms))
            for name in order:
                run_dir = root / f"pass{number}-{name.replace(' ', '_').replace(',', '').replace('=', '_')}"
                run_dir.mkdir()
                shutil.copy(shared / ARCHIVE_NAME, run_dir / ARCHIVE_NAME)
                r = run_arm([*common, *arms[name]], run_dir, per_pass)
                totals[name]["candidates"] += r["candidates"]
                totals[name]["seconds"] += r["seconds"]
                totals[name]["fine_tunes"] += r["fine_tunes"] * r["candidates"]
                print(f"pass {number + 1} {name:18}: {r['candidates']} candidates (k={r['k']}) in "
                      f"{r['seconds']:.1f} s, {r['fine_tunes']:.2f} fine-tunes each", flush=True)
        results = {}
        for name, t in totals.items():
            results[name] = {"per_hour": t["candidates"] / t["seconds"] * 3600}
            print(f"{name:18}: {t['candidates']} candidates in {t['seconds']:.1f} s = "
                  f"{results[name]['per_hour']:.0f}/hour, {t['fine_tunes'] / t['candidates']:.2f} fine-tunes "
                  "per candidate", flush=True)
        base = results["1 worker"]["per_hour"]
        for name in list(arms)[1:]:
            print(f"{name} / 1 worker = {results[name]['per_hour'] / base:.2f}x candidates per hour")
        lock_step = results["2 workers, k=1"]["per_hour"]
        print(f"2 workers, k=auto / k=1 = {results['2 workers, k=auto']['per_hour'] / lock_step:.2f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
