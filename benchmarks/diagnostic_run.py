"""What a ``discover`` run on the diagnostic tier costs, and where the time goes.

    python benchmarks/diagnostic_run.py --generations 50            # runs discover task=diagnostic, then summarises
    python benchmarks/diagnostic_run.py --summarise /tmp/diag50      # a run (finished or not) already on disk
    python benchmarks/diagnostic_run.py --generations 50 --compare executor.kept_oracles=0 executor.kept_oracles=2

Prints the wall time, the load average, the fine-tunes run (search and confirmation) and their rate per hour, the
run's phases from the archive's timestamps (references, candidates, confirmation), the share of candidate seconds
spent on the reference losses, and per row the split the cascade records (numeric checks, fine-tune steps, the
rest: mostly waiting for a loss oracle, whose start-up imports torch), then the leaderboard's top lines. The run's
cache directory is fresh (a temporary one) unless ``--cache`` names one, so the references are trained, not read
from the store. ``--compare A B``: two runs one after the other, each with its fresh cache and one extra override
(e.g. a fresh oracle per job against one per candidate), then whether their archives agree row for row;
``--parallel`` runs both at once (same load on both), ``--timeout`` cuts a run off (it is summarised as far as it got).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path


def _stamp(text: str | None) -> float | None:
    return datetime.fromisoformat(text).timestamp() if text else None


def phases(run_dir: Path, wall: float | None = None) -> dict[str, float]:
    """Seconds of each phase, from the archive's timestamps: references (first created to last finished), candidates
    (to the last candidate finished), confirmation (to the last confirmation fine-tune archived), and with ``wall``
    the rest (start-up, reports)."""
    with sqlite3.connect(run_dir / "archive.sqlite") as conn:
        rows = conn.execute("SELECT proposer, created_at, finished_at FROM candidates").fetchall()
        confirm = conn.execute("SELECT MAX(created_at) FROM evaluations WHERE split = 'confirm'").fetchone()[0]
    refs = [r for r in rows if r[0] == "reference"]
    cands = [r for r in rows if r[0] != "reference" and r[2]]
    start = min(_stamp(r[1]) for r in rows) if rows else 0.0
    ref_end = max((_stamp(r[2]) or start for r in refs), default=start)
    cand_end = max((_stamp(r[2]) for r in cands), default=ref_end)
    conf_end = _stamp(confirm) or cand_end
    out = {"references": ref_end - start, "candidates": cand_end - ref_end,
           "confirmation": max(0.0, conf_end - cand_end)}
    if wall is not None:
        out["rest"] = wall - sum(out.values())
    return out


def fine_tunes(run_dir: Path) -> dict[str, int]:
    with sqlite3.connect(run_dir / "archive.sqlite") as conn:
        return dict(conn.execute("SELECT split, COUNT(*) FROM evaluations GROUP BY split").fetchall())


def summarise(run_dir: Path, wall: float | None = None) -> None:
    runs = fine_tunes(run_dir)
    split = phases(run_dir, wall)
    total = wall or sum(split.values()) or 1.0
    count = sum(runs.values())
    with sqlite3.connect(run_dir / "archive.sqlite") as conn:
        generation = conn.execute("SELECT MAX(generation) FROM candidates WHERE finished_at IS NOT NULL").fetchone()[0]
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(runs.items()))
    print(f"generations finished: {generation}; fine-tunes: {count} ({kinds}), "
          f"{count / total * 3600:,.0f} per hour of wall time; phases: "
          + ", ".join(f"{k} {v / 60:.1f} min ({v / total:.0%})" for k, v in split.items()))
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
    parser.add_argument("--summarise", type=Path, nargs="+", default=None,
                        help="only summarise these run directories (two: also compare their archives)")
    parser.add_argument("--compare", nargs=2, default=None, metavar=("A", "B"),
                        help="two runs, each with one more override (e.g. executor.kept_oracles=0 and =2)")
    parser.add_argument("--parallel", action="store_true",
                        help="with --compare: run both arms at once, so that they share the machine's load")
    parser.add_argument("--timeout", type=float, default=None, help="cut a run off this many seconds after its start")
    parser.add_argument("overrides", nargs="*", help="hydra overrides after task=diagnostic")
    args = parser.parse_args()
    if args.summarise:
        for run_dir in args.summarise:
            summarise(run_dir)
        if len(args.summarise) == 2:
            compare(*args.summarise)
        return
    arms = args.compare or [None]
    runs = []
    for i, arm in enumerate(arms):
        if args.run_dir is not None:
            run_dir = args.run_dir / f"arm{i}" if args.compare else args.run_dir
        else:
            run_dir = Path(tempfile.mkdtemp(prefix="diag-run-")) / "run"
        cache = args.cache if args.cache and not args.compare else Path(tempfile.mkdtemp(prefix="diag-cache-"))
        runs.append(Run(args.generations, [*args.overrides, *([arm] if arm else [])], run_dir, cache))
        if not args.parallel:
            runs[-1].finish(args.timeout)
    for run in runs:
        run.finish(args.timeout)
    if len(runs) == 2:
        compare(runs[0].run_dir, runs[1].run_dir)


def compare(first: Path, second: Path) -> None:
    (rows_a, runs_a), (rows_b, runs_b) = archive_rows(first), archive_rows(second)
    common = {r[0] for r in rows_a} & {r[0] for r in rows_b}
    same = [r for r in rows_a if r[0] in common] == [r for r in rows_b if r[0] in common] and \
        [e for e in runs_a if e[0] in common] == [e for e in runs_b if e[0] in common]
    print(f"archives of {first} and {second} on the {len(common)} rows both finished: "
          f"{'identical' if same else 'DIFFERENT'} (name, status, fitness, every search fine-tune's fitness)")


def archive_rows(run_dir: Path) -> tuple[list, list]:
    """What must not depend on how jobs reached their oracles: each finished row's verdict and every search
    fine-tune's fitness (confirmation ranks the rows finished, so a run cut off early confirms others)."""
    with sqlite3.connect(run_dir / "archive.sqlite") as conn:
        rows = conn.execute("SELECT id, name, status, fitness FROM candidates WHERE finished_at IS NOT NULL "
                            "ORDER BY id").fetchall()
        runs = conn.execute("SELECT candidate_id, seed, split, learning_rate, fitness FROM evaluations "
                            "WHERE split = 'search' ORDER BY candidate_id, seed, learning_rate").fetchall()
    return rows, runs


class Run:
    """One ``discover task=diagnostic`` in the background (arms of ``--parallel`` share the machine's load)."""

    def __init__(self, generations: int, overrides: list[str], run_dir: Path, cache: Path):
        self.run_dir, self.cut = run_dir, False
        command = ["discover", "--generations", str(generations), "task=diagnostic", "wandb.mode=disabled",
                   *overrides, f"hydra.run.dir={run_dir}"]
        self.title = "$ " + " ".join(command) + f" (DISCOPOP_CACHE_DIR={cache})"
        print(self.title, flush=True)
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log = run_dir.parent / f"{run_dir.name}.out"
        self.load = os.getloadavg()[0]
        self.started = time.perf_counter()
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True,
                                         env={**os.environ, "DISCOPOP_CACHE_DIR": str(cache)})
        self.wall: float | None = None

    def finish(self, timeout: float | None) -> None:
        """Wait for the run (cut off ``timeout`` s after its start: SIGTERM, then SIGKILL) and summarise it once."""
        if self.wall is not None:
            return
        left = None if timeout is None else max(1.0, timeout - (time.perf_counter() - self.started))
        try:
            self.proc.wait(left)
        except subprocess.TimeoutExpired:
            self.cut = True
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.wall = time.perf_counter() - self.started
        print(f"\n{self.title}\nexit {self.proc.returncode}{' (cut off)' if self.cut else ''}; "
              f"{self.wall / 60:.1f} min wall; load average {self.load:.1f} at start, "
              f"{os.getloadavg()[0]:.1f} at end ({os.cpu_count()} cores)")
        summarise(self.run_dir, self.wall)
        out = self.log.read_text(errors="replace")
        board = out[out.find("Leaderboard"):] if "Leaderboard" in out else out[-2000:]
        print("\n".join(board.splitlines()[:14]), flush=True)


if __name__ == "__main__":
    main()
