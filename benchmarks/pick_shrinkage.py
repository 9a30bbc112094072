"""How much of a search's pick is selection on its own search data: the gap to the strongest baseline on the
search split beside the same gap confirmed on fresh seeds and contexts the search never used.

    python benchmarks/pick_shrinkage.py OUT_DIR [--arms feedback none]

Reads ``summary.json`` and the run archives that ``search_efficiency.py`` wrote under OUT_DIR (read-only; no loss
code runs). Per run and arm: the pick's (top lower confidence bound) search fitness minus the strongest baseline's
(the one its confirmation is against), as a mean over the race seeds both have (the seeds the search ranks by); the
confirmed delta against that baseline; their difference, the shrinkage; and the search gap seed by seed. A search
that keeps selecting on one fixed split (the feedback arm breeds from its best rows, generation after generation)
can fit that split; best-of-N sampling selects on it once, at the end. A shrinkage well above the control arm's says
the feedback arm's extra search fitness is selection, not loss; a gap the pick keeps on every search seed but loses
on fresh data was fitted to the search contexts all seeds share, not to one seed's luck.

A run with ``selection.pick_holdout`` ranks rows for selection on one half of the search contexts and picks its
finalists on the other (``metrics.pick``): the search gap is then the selection half's, and the held-out gap (the
same seed mean on the half that picked) is printed beside it, with its own shrinkage.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import NamedTuple

from discopop.archive import ARCHIVE_NAME, Archive

REFERENCE = "reference"


def baseline_name(verdict_text: str) -> str | None:
    """The baseline a confirmation verdict names (``... beats cell, Holm ...`` → ``cell``)."""
    for word in (" beats ", " of ", " below "):
        if word in verdict_text:
            return verdict_text.split(word, 1)[1].split(",", 1)[0].strip()
    return None


class Gaps(NamedTuple):
    """One run's pick against the strongest baseline."""

    search: float  # seed mean of the search-split gap over the race seeds both rows have
    confirmed: float  # the confirmed delta (fresh seeds, unseen contexts)
    per_seed: dict[int, float]  # the search gap per common race seed
    held_out: float | None  # the same seed mean on the contexts held out of selection (None: no holdout)


def race_scores(metrics: dict, key: str = "race") -> dict[int, float]:
    """A row's search fitness per race seed at its chosen rate (``metrics.race``; ``key="pick"``: on the contexts
    held out of selection), {} where it has none."""
    race = metrics.get(key) or {}
    seeds, values = race.get("seeds") or [], race.get("fitness") or []
    return {int(s): float(v) for s, v in zip(seeds, values, strict=False) if isinstance(v, int | float)}


def seed_mean_gap(mine: dict[int, float], theirs: dict[int, float]) -> dict[int, float]:
    """The gap on each seed both rows have, in seed order."""
    return {seed: mine[seed] - theirs[seed] for seed in sorted(set(mine) & set(theirs))}


def run_gaps(run: dict) -> Gaps | None:
    """One run's pick against the strongest baseline (``Gaps``); None if unknown."""
    pick = run.get("pick") or {}
    name = baseline_name(pick.get("text", ""))
    if not pick or name is None or pick.get("delta") is None:
        return None
    archive = Archive(Path(run["run"]) / ARCHIVE_NAME, create=False)
    try:
        row = archive.get(int(pick["id"]))
        baselines = archive.rows_by_proposer(REFERENCE, name=name)
    finally:
        archive.close()
    if row is None or row.fitness is None or not baselines or baselines[0].fitness is None:
        return None
    per_seed = seed_mean_gap(race_scores(row.metrics), race_scores(baselines[0].metrics))
    # The seed mean over the race seeds both rows have (what the search ranks by), else the run seed's fitness.
    gap = statistics.fmean(per_seed.values()) if per_seed else row.fitness - baselines[0].fitness
    held_out = seed_mean_gap(race_scores(row.metrics, "pick"), race_scores(baselines[0].metrics, "pick"))
    return Gaps(gap, float(pick["delta"]), per_seed, statistics.fmean(held_out.values()) if held_out else None)


def describe(values: list[float]) -> str:
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
    return f"{mean:+.4f} ± {se:.4f} (n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="search_efficiency.py --out directory (with summary.json)")
    parser.add_argument("--arms", nargs="+", default=["feedback", "none"])
    args = parser.parse_args()
    summary = json.loads((args.out / "summary.json").read_text(encoding="utf-8"))
    shrink: dict[str, dict[str, float]] = {}
    for arm in args.arms:
        shrink[arm], held = {}, []
        for seed, run in sorted(summary.get(arm, {}).items(), key=lambda kv: int(kv[0])):
            gaps = run_gaps(run)
            if gaps is None:
                print(f"{arm:8s} seed {seed}: no pick or baseline to compare")
                continue
            shrink[arm][seed] = gaps.search - gaps.confirmed
            seeds = ", ".join(f"{s}: {g:+.4f}" for s, g in gaps.per_seed.items())
            line = (f"{arm:8s} seed {seed}: search gap {gaps.search:+.4f} (per search seed {seeds}), "
                    f"confirmed {gaps.confirmed:+.4f}, shrinkage {gaps.search - gaps.confirmed:+.4f}")
            if gaps.held_out is not None:
                held.append(gaps.held_out - gaps.confirmed)
                line += f"; held-out gap {gaps.held_out:+.4f}, shrinkage from it {held[-1]:+.4f}"
            print(line)
        if shrink[arm]:
            print(f"{arm:8s} mean shrinkage {describe(list(shrink[arm].values()))}")
        if held:
            print(f"{arm:8s} mean shrinkage from the held-out gap {describe(held)}")
    if len(args.arms) == 2:
        first, second = args.arms
        paired = [shrink[first][s] - shrink[second][s] for s in shrink[first] if s in shrink[second]]
        if paired:
            print(f"{first} - {second}, paired by run seed: {describe(paired)}")


if __name__ == "__main__":
    main()
