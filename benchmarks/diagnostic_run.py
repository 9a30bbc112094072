"""What a ``discover`` run on the diagnostic tier costs, and where the time goes.

    python benchmarks/diagnostic_run.py --generations 50            # runs discover task=diagnostic, then summarises
    python benchmarks/diagnostic_run.py --summarise /tmp/diag50      # a run (finished or not) already on disk

Prints the wall time, the load average, the share of candidate seconds spent on the reference losses, and per
row the split the cascade records (numeric checks, fine-tune steps, the rest: mostly waiting for a fresh loss
oracle, whose start-up imports torch), then the leaderboard's top lines. The run's cache directory is fresh
(a temporary one) unless ``--cache`` names one, so the references are trained, not read from the store.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path


def summarise(run_dir: Path) -> None:
    with sqlite3.connect(run_dir / "archive.sqlite") as conn:
        rows = conn.execute("SELECT proposer, status, metrics FROM candidates").fetchall()
    totals: dict[str, dict[str, float]] = {}
    for proposer, _status, metrics in rows:
        secs = json.loads(metrics or "{}").get("seconds") or {}
        kind = "reference" if proposer == "reference" else "candidate"
        part = totals.setdefault(kind, {"rows": 0, "total": 0.0, "check": 0.0, "steps": 0.0, "runs": 0})
        part["rows"] += 1
        for key in ("total", "check", "steps", "runs"):
            part[key] += float(secs.get(key) or 0.0)
    everything = sum(p["total"] for p in totals.values()) or 1.0
    for kind, p in totals.items():
        runs = max(1, p["runs"])
        print(f"{kind:9s}: {p['rows']:.0f} rows, {p['total']:.0f} row-s ({p['total'] / everything:.0%} of all), "
              f"{p['runs']:.0f} fine-tunes: {p['steps'] / runs:.2f} s of steps each, "
              f"{(p['total'] - p['steps'] - p['check']) / runs:.2f} s other (oracle start, scheduling) each; "
              f"checks {p['check'] / max(1, p['rows']):.2f} s/row")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generations", type=int, default=50)
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--cache", type=Path, default=None, help="DISCOPOP_CACHE_DIR (default: a fresh one)")
    parser.add_argument("--summarise", type=Path, default=None, help="only summarise this run directory")
    parser.add_argument("overrides", nargs="*", help="hydra overrides after task=diagnostic")
    args = parser.parse_args()
    if args.summarise:
        summarise(args.summarise)
        return
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="diag-run-")) / "run"
    cache = args.cache or Path(tempfile.mkdtemp(prefix="diag-cache-"))
    command = ["discover", "--generations", str(args.generations), "task=diagnostic", "wandb.mode=disabled",
               *args.overrides, f"hydra.run.dir={run_dir}"]
    print("$ " + " ".join(command), f"(DISCOPOP_CACHE_DIR={cache})", flush=True)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "DISCOPOP_CACHE_DIR": str(cache)})
    wall = time.perf_counter() - started
    print(f"exit {out.returncode}; {wall / 60:.1f} min wall; load average {load:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end ({os.cpu_count()} cores)")
    summarise(run_dir)
    board = out.stdout[out.stdout.find("Leaderboard"):] if "Leaderboard" in out.stdout else out.stderr[-2000:]
    print("\n".join(board.splitlines()[:14]))


if __name__ == "__main__":
    main()
