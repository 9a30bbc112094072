"""Where the README's ``discover`` run spends its time: per phase, per executor round, idle worker-seconds.

    python benchmarks/default_run_profile.py --generations 6 --cache /tmp/dr_cache --out /tmp/prof_a.json
    python benchmarks/default_run_profile.py --generations 6 --cache /tmp/dr_cache --out /tmp/prof_b.json \
        'cascade.stages=[short]'

Runs the real loop in this process (the sandboxed workers as ``discover`` starts them) with a display that stamps
every event, then prints: each phase's wall time (references, each generation, confirmation, transfer); the
executor's rounds (one ``Executor.run`` call each) with their wall time, the job-seconds inside them and so the idle
worker-seconds (``parallelism x wall - job seconds``: a worker waiting at a round's barrier, on the proposer, or on
the main process); job counts by kind (check, full fine-tune, short fine-tune); per candidate the fine-tunes it
cost. The machine is shared: compare two configurations side by side (alternate runs) and read ratios, not minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from discopop.archive import ARCHIVE_NAME, Archive
from discopop.config.compose import create_run_dir, record_run, resolve_run
from discopop.search.events import JobReturned, JobsQueued, Note, PhaseFinished, PhaseStarted
from discopop.search.loop import Loop


class StampedLog:
    """Every event with the monotonic time it was shown; ``echo``: also print a line as each phase ends (so a run cut
    short by a time limit still says how far it got)."""

    def __init__(self, echo: bool = False) -> None:
        self.events: list[tuple[float, Any]] = []
        self.echo = echo
        self._opened = time.perf_counter()

    def show(self, event: Any) -> None:
        stamp = time.perf_counter()
        self.events.append((stamp, event))
        if self.echo and isinstance(event, PhaseFinished):
            print(f"[{stamp - self._opened:8.1f} s] {event.label} done", flush=True)


def _kind(job: Any) -> str:
    if job.stage == "check":
        return "check"
    if job.step_fraction:
        return "short"
    return "confirm" if job.split == "confirm" else "train"


def summarise(log: StampedLog, started: float, wall: float, parallelism: int) -> dict[str, Any]:
    """Phases, rounds and idle worker-seconds from the stamped events."""
    phases: dict[str, float] = {}
    opened: dict[str, float] = {}
    rounds: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    phase = "start-up"
    for stamp, event in log.events:
        if isinstance(event, PhaseStarted):
            opened[event.label], phase = stamp, event.label
        elif isinstance(event, PhaseFinished) and event.label in opened:
            phases[event.label] = stamp - opened[event.label]
        elif isinstance(event, JobsQueued):
            current = {"phase": phase, "start": stamp, "end": stamp, "jobs": len(event.jobs), "job_seconds": 0.0,
                       "kinds": defaultdict(int)}
            for job in event.jobs:
                current["kinds"][_kind(job)] += 1
            rounds.append(current)
        elif isinstance(event, JobReturned) and current is not None:
            current["end"] = stamp
            current["job_seconds"] += event.result.seconds
    by_phase: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    kinds: dict[str, int] = defaultdict(int)
    for r in rounds:
        span = r["end"] - r["start"]
        group = "generations" if r["phase"].startswith("generation") else r["phase"]
        agg = by_phase[group]
        agg["rounds"] += 1
        agg["round_wall"] += span
        agg["job_seconds"] += r["job_seconds"]
        agg["idle_in_rounds"] += max(0.0, parallelism * span - r["job_seconds"])
        agg["rounds_with_one_job"] += r["jobs"] == 1
        for k, n in r["kinds"].items():
            kinds[k] += n
            agg[f"jobs_{k}"] += n
    notes = [e.text for _, e in log.events if isinstance(e, Note) and e.text.startswith(("work ahead", "baselines"))]
    gens = sum(v for k, v in phases.items() if k.startswith("generation"))
    busy = sum(r["job_seconds"] for r in rounds)
    return {"wall": wall, "parallelism": parallelism,
            "phases": {"references": phases.get("references"), "generations": gens, "pick": phases.get("pick"),
                       "confirmation": phases.get("confirmation"),
                       "transfer": phases.get("confirming transfer to held-out variants")},
            "jobs": dict(kinds), "job_seconds": busy,
            "idle_worker_seconds": parallelism * wall - busy,
            "by_phase": {k: {kk: round(vv, 2) for kk, vv in v.items()} for k, v in by_phase.items()},
            "generation_walls": [round(v, 2) for k, v in phases.items() if k.startswith("generation")],
            "notes": notes}


def per_candidate(run_dir: Path) -> dict[str, Any]:
    """Fine-tunes per evolved candidate, by status; how many the cheap stage rejected."""
    archive = Archive(run_dir / ARCHIVE_NAME, create=False)
    try:
        rows = archive.rows_after_generation(0)
        statuses: dict[str, int] = defaultdict(int)
        filtered = 0
        for row in rows:
            statuses[str(row.status)] += 1
            filtered += row.metrics.get("stage") == "fidelity"
        return {"candidates": len(rows), "statuses": dict(statuses), "filtered": filtered,
                "evolved_fine_tunes": archive.evolved_fine_tunes(),
                "best": max((r.fitness for r in rows if r.fitness is not None), default=None)}
    finally:
        archive.close()


def profile(generations: int, overrides: list[str], run_dir: Path, echo: bool = False) -> dict[str, Any]:
    """Run ``discover --generations N`` with ``overrides`` in this process (the loop and sandboxed workers discover
    starts, its config recorded in ``run_dir`` so ``discover --resume`` continues it) and summarise where the time
    went; wandb is always disabled."""
    recorded = ["wandb.mode=disabled", *overrides, f"hydra.run.dir={run_dir}"]
    cfg, _ = resolve_run(generations, None, recorded)
    create_run_dir(run_dir)
    record_run(cfg, run_dir, recorded, resumed=False)
    log = StampedLog(echo)
    loop = Loop(cfg, run_dir, log)
    started = time.perf_counter()
    loop.run(generations)
    wall = time.perf_counter() - started
    loop.archive.close()
    out = summarise(log, started, wall, cfg.executor.workers if isinstance(cfg.executor.workers, int) else 2)
    out.update(per_candidate(run_dir), overrides=overrides, run_dir=str(run_dir), load=os.getloadavg())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=6)
    parser.add_argument("--cache", help="DISCOPOP_CACHE_DIR for the run (the task built there; its store is used)")
    parser.add_argument("--run-dir", help="run directory (default: a fresh temporary one)")
    parser.add_argument("--out", help="write the summary as JSON here")
    parser.add_argument("overrides", nargs="*", help="config overrides (wandb is always disabled)")
    args = parser.parse_args()
    if args.cache:
        os.environ["DISCOPOP_CACHE_DIR"] = args.cache
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="default-run-"))
    out = profile(args.generations, args.overrides, run_dir)
    text = json.dumps(out, indent=1, default=str)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
