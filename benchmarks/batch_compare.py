"""Two batches of ``search_efficiency.py`` runs side by side, paired by run seed: did a change to the search help?

    python benchmarks/batch_compare.py BASE_OUT NEW_OUT [--arms feedback none]

Reads the two ``summary.json`` files only (no archive, no loss code). Per arm and run seed, from each batch: the
confirmed winner's verdict against the strongest baseline, whether it also transfers or holds on the held-out
variants ("beat and hold": the issue's figure), and the pick's (the search's own top row's) confirmed delta against
the strongest baseline. Then, per arm, NEW - BASE of the pick's delta paired by run seed (mean and a 95% t
interval), and the counts. The two batches must share the world, seeds and settings but for the change under test;
this script cannot check that (the runs' configs can: ``RUN/.hydra/config.yaml``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from discopop.fitness.stats import BEATS, pooled_over_runs

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark's rule for the figure
import search_efficiency  # noqa: E402


def beat_and_hold(run: dict[str, Any]) -> bool:
    """``search_efficiency.beat_and_hold`` of the run's winner (the figure its own summary counts)."""
    return search_efficiency.beat_and_hold(run.get("winner"))


def pick_delta(run: dict[str, Any]) -> float | None:
    """The pick's confirmed delta against the strongest baseline (None where it was not confirmed)."""
    delta = (run.get("pick") or {}).get("delta")
    return float(delta) if isinstance(delta, int | float) else None


def paired(base: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]) -> list[float]:
    """NEW - BASE of the pick's delta, one value per run seed both batches confirmed."""
    out = []
    for seed in sorted(base.keys() & new.keys(), key=int):
        a, b = pick_delta(base[seed]), pick_delta(new[seed])
        if a is not None and b is not None:
            out.append(b - a)
    return out


def interval(values: list[float]) -> str:
    """Mean and a 95% t interval over the pairs (``stats.pooled_over_runs``; fewer than 2: the mean alone)."""
    pooled = pooled_over_runs(values)
    if pooled is None:
        return f"{statistics.fmean(values):+.4f} (n={len(values)})"
    return f"{pooled.mean:+.4f} [{pooled.low:+.4f}, {pooled.high:+.4f}] (n={pooled.runs}, p={pooled.p:.2g})"


def compare(base: dict[str, Any], new: dict[str, Any], arms: list[str]) -> list[str]:
    """The report's lines (see the module docstring)."""
    lines = []
    for arm in arms:
        a, b = base.get(arm, {}), new.get(arm, {})
        for seed in sorted(a.keys() | b.keys(), key=int):
            cells = []
            for tag, runs in (("base", a), ("new", b)):
                run = runs.get(seed)
                if run is None:
                    cells.append(f"{tag}: -")
                    continue
                delta = pick_delta(run)
                cells.append(f"{tag}: winner {(run.get('winner') or {}).get('verdict', '-')}, beat-and-hold "
                             f"{'yes' if beat_and_hold(run) else 'no'}, pick "
                             f"{'-' if delta is None else f'{delta:+.4f}'}")
            lines.append(f"{arm:8s} seed {seed}: " + "; ".join(cells))
        for tag, runs in (("base", a), ("new", b)):
            beats = sum((r.get("winner") or {}).get("verdict") == BEATS for r in runs.values())
            held = sum(beat_and_hold(r) for r in runs.values())
            lines.append(f"{arm:8s} {tag}: winner beats {beats}/{len(runs)}, beat-and-hold {held}/{len(runs)}")
        diffs = paired(a, b)
        if diffs:
            lines.append(f"{arm:8s} new - base, pick's confirmed delta paired by run seed: {interval(diffs)}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="search_efficiency.py --out of the batch without the change")
    parser.add_argument("new", type=Path, help="search_efficiency.py --out of the batch with it")
    parser.add_argument("--arms", nargs="+", default=["feedback", "none"])
    args = parser.parse_args()
    base, new = (json.loads((out / "summary.json").read_text(encoding="utf-8")) for out in (args.base, args.new))
    print("\n".join(compare(base, new, args.arms)))


if __name__ == "__main__":
    main()
