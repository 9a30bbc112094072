"""Whether two ``discover`` runs that differ only in how fast they run write the same archive, row for row.

    python benchmarks/same_archive.py --generations 2 --compare executor.fused_backward=false \
        executor.fused_backward=true -- task=diagnostic
    python benchmarks/same_archive.py --summarise RUN_A RUN_B      # two run directories already on disk

Each arm is ``discover --generations N selection.reference_store=false [overrides] ARM`` with its own run
directory (the built task is read from the usual cache; the references are trained, not read from the store), both
at once (``--parallel``) or one after the other. Then every
table of the two archives is compared, all columns but wall-clock ones (``*_at``, anything named ``second``, and the
``seconds`` / ``total`` / ``overhead`` entries of JSON columns): a setting that only changes speed (one oracle round
trip per step, kept oracles) must leave everything else bit for bit the same. Prints ``identical`` or the first
difference, and exits 1 on a difference. Archives of two schema versions (a column added since, such as
``candidates.normalised``) are compared on the columns both have, and the columns only one has are named.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WALL_CLOCK_KEYS = {"total", "overhead"}


def without_wall_clock(value: Any) -> Any:
    """``value`` (decoded JSON) without the entries that measure time."""
    if isinstance(value, dict):
        return {k: without_wall_clock(v) for k, v in value.items()
                if "second" not in k and k not in WALL_CLOCK_KEYS and not k.endswith("_at")}
    if isinstance(value, list):
        return [without_wall_clock(v) for v in value]
    return value


def cell(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return without_wall_clock(json.loads(value))
        except ValueError:
            return value
    return value


def columns_of(archive: Path) -> dict[str, list[str]]:
    """Each table's column names."""
    with sqlite3.connect(f"file:{archive}?mode=ro", uri=True) as conn:
        names = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {name: [r[1] for r in conn.execute(f'PRAGMA table_info("{name}")')] for name in names}


def tables(archive: Path, only: dict[str, set[str]] | None = None) -> dict[str, list[list[Any]]]:
    """Every table's rows, wall-clock columns left out (and, with ``only``, columns not in ``only[table]``):
    ``candidates`` in id order; the rows of any other table sorted and without their ``id`` (parallel workers finish
    confirmation fine-tunes in any order, and each is inserted as it finishes)."""
    with sqlite3.connect(f"file:{archive}?mode=ro", uri=True) as conn:
        names = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        out = {}
        for name in names:
            cursor = conn.execute(f'SELECT * FROM "{name}" ORDER BY rowid')
            columns = [d[0] for d in cursor.description]
            keep = [i for i, c in enumerate(columns) if "second" not in c and not c.endswith("_at")
                    and (name == "candidates" or c != "id") and (only is None or c in only.get(name, set()))]
            rows = [[cell(row[i]) for i in keep] for row in cursor]
            out[name] = rows if name == "candidates" else sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))
    return out


def compare(first: Path, second: Path) -> bool:
    cols_a, cols_b = columns_of(first / "archive.sqlite"), columns_of(second / "archive.sqlite")
    shared = {t: set(cols_a.get(t, [])) & set(cols_b.get(t, [])) for t in set(cols_a) | set(cols_b)}
    for table in sorted(shared):
        for side, mine, theirs in (("first", cols_a, cols_b), ("second", cols_b, cols_a)):
            extra = [c for c in mine.get(table, []) if table in theirs and c not in theirs[table]]
            if extra:
                print(f"only in the {side} archive: {', '.join(f'{table}.{c}' for c in extra)} (compared without)")
    a, b = tables(first / "archive.sqlite", shared), tables(second / "archive.sqlite", shared)
    counts = {name: len(rows) for name, rows in a.items()}
    if a == b:
        print(f"archives identical: {counts}")
        return True
    for name in sorted(set(a) | set(b)):
        rows_a, rows_b = a.get(name, []), b.get(name, [])
        if rows_a != rows_b:
            diff = next((i for i, (x, y) in enumerate(zip(rows_a, rows_b, strict=False)) if x != y), None)
            where = f"row {diff}: {str(rows_a[diff])[:300]} != {str(rows_b[diff])[:300]}" if diff is not None else \
                f"{len(rows_a)} rows != {len(rows_b)} rows"
            print(f"archives DIFFERENT in table {name}: {where}")
    return False


def run(generations: int, overrides: list[str], run_dir: Path) -> subprocess.Popen:
    command = ["discover", "--generations", str(generations), "wandb.mode=disabled", "selection.reference_store=false",
               *overrides, f"hydra.run.dir={run_dir}"]
    print("$ " + " ".join(command), flush=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = (run_dir.parent / f"{run_dir.name}.out").open("w")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="the one override each arm adds")
    parser.add_argument("--summarise", nargs=2, type=Path, metavar=("RUN_A", "RUN_B"))
    parser.add_argument("--parallel", action="store_true", help="run both arms at once")
    parser.add_argument("--run-dir", type=Path, default=None, help="where the arms' run directories go")
    parser.add_argument("overrides", nargs="*", help="hydra overrides both arms share")
    args = parser.parse_args()
    if args.summarise:
        sys.exit(0 if compare(*args.summarise) else 1)
    if not args.compare:
        parser.error("--compare A B or --summarise RUN_A RUN_B")
    root = args.run_dir or Path(tempfile.mkdtemp(prefix="same-archive-"))
    dirs, procs = [root / f"arm{i}" for i in range(2)], []

    def finish(proc: subprocess.Popen, started: float, arm: str) -> None:
        proc.wait()  # each arm's wall time ends when it does (one after the other: before the next one starts)
        print(f"{arm}: exit {proc.returncode}, {(time.perf_counter() - started) / 60:.1f} min wall", flush=True)

    for arm, run_dir in zip(args.compare, dirs, strict=True):
        procs.append((run(args.generations, [*args.overrides, arm], run_dir), time.perf_counter(), arm))
        if not args.parallel:
            finish(*procs[-1])
    if args.parallel:
        for proc, started, arm in procs:
            finish(proc, started, arm)
    if any(proc.returncode for proc, _, _ in procs):
        sys.exit(2)
    sys.exit(0 if compare(*dirs) else 1)


if __name__ == "__main__":
    main()
