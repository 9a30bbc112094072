"""Where a search's good children come from: what selection on the archive could gain over sampling.

    python benchmarks/offspring_yield.py OUT_DIR [OUT_DIR ...] [--arms feedback none]

Reads the archives ``search_efficiency.py`` wrote under each OUT_DIR (``seed*/<arm>/archive.sqlite``), read-only;
no loss code runs. Per arm it counts the evolved children whose search fitness is above the run's strongest
reference ("hits"), split by whether the first parent is a reference or an evolved loss, and how many beat their
own parent; then, per reference used as a first parent, its children's hit rate beside the reference's own search
fitness (mean over runs). If the hit rate hardly depends on the parent's fitness, tournament selection on that
fitness has little to gain over drawing parents at random (the control arm), whatever the search's other merits.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from discopop.archive import ARCHIVE_NAME, Archive


@dataclass
class Tally:
    """Children of one kind of parent: how many were scored, how many beat the best reference and their parent."""

    children: int = 0
    hits: int = 0
    above_parent: int = 0
    parent_fitness: list[float] = field(default_factory=list)

    def line(self) -> str:
        share = self.hits / self.children if self.children else 0.0
        return f"{self.children:4d} children, {self.hits:3d} above the best reference ({share:4.0%}), " \
               f"{self.above_parent:3d} above their parent"


def archives(out_dirs: list[Path], arm: str) -> list[Path]:
    """Every run's archive of ``arm`` under the given benchmark output directories, in a stable order."""
    return sorted(p for out in out_dirs for p in out.glob(f"seed*/{arm}/{ARCHIVE_NAME}"))


def tally_arm(paths: list[Path]) -> tuple[dict[str, Tally], dict[str, Tally]]:
    """(by parent kind: reference / evolved, by reference parent's name) over the runs' scored children."""
    by_kind: dict[str, Tally] = defaultdict(Tally)
    by_reference: dict[str, Tally] = defaultdict(Tally)
    for path in paths:
        archive = Archive(path, create=False)
        try:
            rows = {row.id: row for row in archive.rows()}
        finally:
            archive.close()
        references = [r for r in rows.values() if r.proposer == "reference"]
        scored_refs = [r.fitness for r in references if r.fitness is not None]
        if not scored_refs:
            continue
        best = max(scored_refs)
        for ref in references:
            if ref.fitness is not None:
                by_reference[ref.name].parent_fitness.append(ref.fitness)
        for row in rows.values():
            if row.proposer == "reference" or row.fitness is None or not row.parent_ids:
                continue
            parent = rows.get(row.parent_ids[0])
            if parent is None:
                continue
            kind = "reference" if parent.proposer == "reference" else "evolved"
            tallies = [by_kind[kind]] + ([by_reference[parent.name]] if kind == "reference" else [])
            for tally in tallies:
                tally.children += 1
                tally.hits += row.fitness > best
                tally.above_parent += parent.fitness is not None and row.fitness > parent.fitness
    return by_kind, by_reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dirs", nargs="+", type=Path, help="search_efficiency.py --out directories")
    parser.add_argument("--arms", nargs="+", default=["feedback", "none"])
    args = parser.parse_args()
    for arm in args.arms:
        paths = archives(args.out_dirs, arm)
        by_kind, by_reference = tally_arm(paths)
        print(f"{arm}: {len(paths)} runs")
        for kind in ("reference", "evolved"):
            if kind in by_kind:
                print(f"  first parent {kind:9s}: {by_kind[kind].line()}")
        ranked = sorted(by_reference.items(), key=lambda kv: -sum(kv[1].parent_fitness) / len(kv[1].parent_fitness))
        for name, tally in ranked:
            if tally.children:
                mean = sum(tally.parent_fitness) / len(tally.parent_fitness)
                print(f"    {name:12s} search fitness {mean:.3f}: {tally.line()}")


if __name__ == "__main__":
    main()
