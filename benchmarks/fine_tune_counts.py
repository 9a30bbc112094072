"""Where a run's fine-tunes went: counts by kind of row and split, and how many rates and seeds each candidate got.

    python benchmarks/fine_tune_counts.py RUN_DIR [RUN_DIR ...]

Reads each run's archive (read-only; nothing is trained). Per run: fine-tunes of references and of evolved
candidates on each split; then the evolved candidates on the search split grouped by (seeds, learning rates) they
were trained at: a candidate at one rate was screened out, one at three or more climbed the rate grid. Side by side
for two runs that differ in one setting, it says whether that setting changed how much work each candidate got
(the wider search split's 1.20x in docs/results.md §0 was attributed this way).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from discopop.archive import ARCHIVE_NAME, Archive

REFERENCE = "reference"


def counts(run: Path) -> tuple[Counter, Counter, int]:
    """(fine-tunes by (kind, split), evolved candidates by (seeds, rates) on the search split, scored evolved rows)."""
    archive = Archive(run / ARCHIVE_NAME, create=False)
    try:
        rows = {row.id: row for row in archive.rows()}
        by_split: Counter = Counter()
        search_points: dict[int, tuple[set[int], set[float]]] = {}
        for evaluation in archive.evaluations():
            row = rows.get(evaluation.candidate_id)
            if row is None:
                continue
            kind = REFERENCE if row.proposer == REFERENCE else "evolved"
            by_split[kind, evaluation.split] += 1
            if kind == "evolved" and evaluation.split == "search":
                seeds, rates = search_points.setdefault(row.id, (set(), set()))
                seeds.add(evaluation.seed)
                rates.add(evaluation.learning_rate)
    finally:
        archive.close()
    shapes = Counter((len(seeds), len(rates)) for seeds, rates in search_points.values())
    return by_split, shapes, len(search_points)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (each with archive.sqlite)")
    args = parser.parse_args()
    for run in args.runs:
        by_split, shapes, evolved = counts(run)
        print(f"{run}: {sum(by_split.values())} fine-tunes")
        for (kind, split), n in sorted(by_split.items()):
            print(f"  {kind:9s} {split:24s} {n:5d}")
        search = by_split["evolved", "search"]
        per = search / evolved if evolved else 0.0
        print(f"  evolved candidates on the search split: {evolved}, {per:.2f} fine-tunes each")
        for (seeds, rates), n in sorted(shapes.items()):
            print(f"    {seeds} seed(s) x {rates} rate(s): {n}")


if __name__ == "__main__":
    main()
