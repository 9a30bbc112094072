"""The rate screen as a cheap stage: its rank agreement with the full protocol, and what tighter cuts would save.

    python benchmarks/screen_replay.py RUN_DIR [--margins 0.05 0.03 0.02 0.01] [--top 10]

Why: on a fine-tune task every candidate's first fine-tune is a *screen* at one rate (``fitness/tuning.py``); only a
screen within ``training.lr_screen_margin`` of the run's best earns the climb over the rate grid and, when in
contention, the seed race. The screen is thus the cascade's first stage (issue 25: "a coarse rate grid"), and a
tighter margin is the one lever that cuts the generations' fine-tunes without training anything differently. This
reads a finished run's archive (read-only; nothing is trained) and prints:

* where the fine-tunes went: screens, climb points and race seeds, for evolved rows and references;
* the screen's agreement with the full protocol: Spearman's rho (90% percentile bootstrap) between a row's screen
  value (the tuning half at its first rate, ``metrics.lr_sweep``) and its fitness, over every row that was climbed
  (a screened-out row has no full-protocol score): the line a run prints at its end
  (``search/screen_agreement.py``), then the evolved rows alone;
* a replay of the screening rule at each margin: a row is rejected when its screen is more than the margin below
  the best fitness of the rows finished before its screen was written (the rule the run applied, checked against
  the run's own decisions at its margin); the climb and race fine-tunes the rejected rows spent; and whether any of
  the run's ``--top`` rows or its confirmed finalists would have been rejected;
* the race: the seed-to-seed SD at the chosen rate, and the fine-tunes beyond one and two seeds.

A replay is first-order: a run that rejected more would have bred from other parents.
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from discopop.archive import ARCHIVE_NAME, Archive
from discopop.fitness.rank_agreement import bootstrap_spearman
from discopop.search.screen_agreement import screen_agreement

REFERENCE = "reference"


@dataclass
class RowFacts:
    """What the replay needs of one scored row."""

    id: int
    reference: bool
    fitness: float
    tuned: bool
    confirmed: bool
    finished: str
    sweep: dict[float, float]
    screen_value: float | None = None
    screen_written: str = ""
    search_runs: list[tuple[int, float, float, str]] = field(default_factory=list)  # (seed, rate, fitness, written)

    @property
    def chosen_seed_values(self) -> list[float]:
        """Fitness of each seed's run at the row's most-trained rate (the race runs at the chosen rate)."""
        by_rate: dict[float, list[float]] = defaultdict(list)
        for _, rate, value, _ in self.search_runs:
            by_rate[rate].append(value)
        return max(by_rate.values(), key=len) if by_rate else []


def load(run: Path) -> list[RowFacts]:
    """Scored rows of ``run``'s archive, in id order, with their search-split runs."""
    uri = f"file:{run / 'archive.sqlite'}?mode=ro"
    with sqlite3.connect(uri, uri=True) as conn:
        rows = conn.execute("SELECT id, proposer, fitness, metrics FROM candidates WHERE status = 'scored' "
                            "AND fitness IS NOT NULL ORDER BY id").fetchall()
        runs = conn.execute("SELECT candidate_id, seed, learning_rate, fitness, created_at FROM evaluations "
                            "WHERE split = 'search' AND fitness IS NOT NULL ORDER BY id").fetchall()
        finished = dict(conn.execute("SELECT id, finished_at FROM candidates").fetchall())
    facts: dict[int, RowFacts] = {}
    for row_id, proposer, fitness, metrics_text in rows:
        metrics = json.loads(metrics_text or "{}")
        facts[row_id] = RowFacts(id=row_id, reference=proposer == REFERENCE, fitness=float(fitness),
                                 tuned=bool(metrics.get("lr_tuned", True)),
                                 confirmed=bool(metrics.get("confirmation")), finished=finished.get(row_id) or "",
                                 sweep={float(k): v for k, v in (metrics.get("lr_sweep") or {}).items()})
    for row_id, seed, rate, value, written in runs:
        if row_id in facts:
            facts[row_id].search_runs.append((int(seed), float(rate), float(value), written))
    for row in facts.values():
        if row.search_runs:
            _, rate, _, written = row.search_runs[0]
            row.screen_value = row.sweep.get(rate)
            row.screen_written = written
    return [facts[k] for k in sorted(facts)]


def best_before(rows: list[RowFacts], written: str) -> float | None:
    """The best fitness of the rows finished before ``written`` (the run's best when that screen was judged)."""
    values = [r.fitness for r in rows if r.finished and r.finished < written]
    return max(values) if values else None


def rejected_at(rows: list[RowFacts], margin: float) -> list[RowFacts]:
    """The evolved rows a screen margin of ``margin`` rejects (references are never screened)."""
    out = []
    for row in rows:
        if row.reference or row.screen_value is None:
            continue
        best = best_before(rows, row.screen_written)
        if best is not None and row.screen_value < best - margin:
            out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run directory (with archive.sqlite)")
    parser.add_argument("--margins", type=float, nargs="+", default=[0.05, 0.03, 0.02, 0.015, 0.01])
    parser.add_argument("--run-margin", type=float, default=0.05, help="the run's training.lr_screen_margin")
    parser.add_argument("--top", type=int, default=10, help="how many of the run's best evolved rows to watch")
    args = parser.parse_args()
    rows = load(args.run)
    evolved = [r for r in rows if not r.reference]

    print(f"{args.run.name}: {len(rows)} scored rows ({len(evolved)} evolved)")
    for label, group in (("evolved", evolved), ("references", [r for r in rows if r.reference])):
        seeds = [len({s for s, *_ in r.search_runs}) for r in group]
        rates = [len({rate for _, rate, *_ in r.search_runs}) for r in group]
        total = sum(len(r.search_runs) for r in group)
        race = sum(s - 1 for s in seeds)
        print(f"  {label}: {total} search fine-tunes, {total / max(len(group), 1):.2f} a row: first rate "
              f"{len(group)}, further rates {sum(rates) - len(group)}, race seeds {race}")

    archive = Archive(args.run / ARCHIVE_NAME, create=False)
    try:  # the line a run prints at its end (search/screen_agreement.py), from the same archive
        print(screen_agreement(archive.rows(), archive.evaluations(split="search")).describe(0.5))
    finally:
        archive.close()
    evolved_climbed = [r for r in evolved if r.tuned and r.screen_value is not None]
    agreement_evolved = bootstrap_spearman([r.screen_value for r in evolved_climbed],
                                           [r.fitness for r in evolved_climbed])
    print(f"  evolved rows only: Spearman {agreement_evolved.rho:+.3f} [{agreement_evolved.lower:+.3f}, "
          f"{agreement_evolved.upper:+.3f}] n={agreement_evolved.n}")
    gains = np.array([r.fitness - r.screen_value for r in evolved_climbed])
    if gains.size:
        q = np.quantile(gains, [0.1, 0.5, 0.9])
        print(f"  fitness - screen of climbed evolved rows: 10% {q[0]:+.4f}, median {q[1]:+.4f}, 90% {q[2]:+.4f}, "
              f"max {gains.max():+.4f}")

    replayed = {r.id for r in rejected_at(rows, args.run_margin)}
    actual = {r.id for r in evolved if not r.tuned}
    print(f"replay check at the run's margin {args.run_margin}: {len(replayed)} rejected, the run rejected "
          f"{len(actual)}, {len(replayed ^ actual)} differ")
    ranked = sorted(evolved, key=lambda r: r.fitness, reverse=True)
    top = {r.id for r in ranked[:args.top]}
    finalists = {r.id for r in evolved if r.confirmed}
    evolved_runs = sum(len(r.search_runs) for r in evolved)
    print(f"  margin | rejected | their climb+race fine-tunes (share of evolved) | top-{args.top} lost | "
          "finalists lost")
    for margin in args.margins:
        rejected = rejected_at(rows, margin)
        saved = sum(len(r.search_runs) - 1 for r in rejected)
        lost = sorted(r.id for r in rejected if r.id in top)
        print(f"  {margin:6.3f} | {len(rejected):8d} | {saved:5d} ({saved / max(evolved_runs, 1):.0%}) | "
              f"{lost or 'none'} | {sorted(r.id for r in rejected if r.id in finalists) or 'none'}")

    raced = [r.chosen_seed_values for r in evolved if len(r.chosen_seed_values) >= 2]
    if raced:
        pooled = math.sqrt(sum(float(np.var(v, ddof=1)) * (len(v) - 1) for v in raced)
                           / sum(len(v) - 1 for v in raced))
        beyond = {k: sum(max(len({s for s, *_ in r.search_runs}) - k, 0) for r in evolved) for k in (1, 2)}
        print(f"race: {len(raced)} evolved rows with >= 2 seeds; seed-to-seed SD at the chosen rate {pooled:.4f}; "
              f"fine-tunes beyond 1 seed {beyond[1]} ({beyond[1] / max(evolved_runs, 1):.0%}), beyond 2 seeds "
              f"{beyond[2]} ({beyond[2] / max(evolved_runs, 1):.0%}); spread of the top {args.top}: "
              f"{ranked[0].fitness - ranked[min(args.top, len(ranked)) - 1].fitness:.4f}")


if __name__ == "__main__":
    main()
