"""Fresh-seed confirmation of the winners and the leaderboard.

Search fitness is measured on one seed and one half of the held-out prompts, and the best of
many noisy measurements is biased upwards (winner's curse). So the top candidates and DPO are
re-trained on fresh seeds and scored on the *other* half of the held-out prompts, and a winner
is only said to beat DPO when the difference of means exceeds twice its standard error. The
DiscoPOP paper's own differences were mostly within error; this says so when it is the case.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from rich.console import Console
from rich.table import Table

from discopop.archive import Archive, Row
from discopop.executors import Executor, Job


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def verdict(delta: float, std_a: float, n_a: int, std_b: float, n_b: int) -> tuple[bool, float]:
    """Is ``delta`` (difference of means) larger than the noise? Returns (significant, 2*SE)."""
    se = math.sqrt(std_a**2 / max(n_a, 1) + std_b**2 / max(n_b, 1))
    return abs(delta) > 2 * se and delta != 0.0, 2 * se


def reference_row(archive: Archive, name: str) -> Row | None:
    rows = archive.rows("proposer = 'reference' AND name = ? AND status = 'scored'", (name,))
    return rows[0] if rows else None


def top_candidates(archive: Archive, k: int) -> list[Row]:
    """Best scored non-reference candidates by search fitness."""
    rows = archive.rows("status = 'scored' AND proposer != 'reference'")
    return sorted(rows, key=lambda r: r.fitness or -math.inf, reverse=True)[:k]


def confirm(archive: Archive, executor: Executor, base_seed: int, n_seeds: int, top_k: int,
            baseline: str = "dpo") -> dict[str, Any]:
    """Re-score the top candidates and the baseline on fresh seeds; store results in their rows."""
    seeds = [base_seed + 1000 + i for i in range(n_seeds)]
    base = reference_row(archive, baseline)
    best_ref = best_reference(archive)
    targets = [r for r in top_candidates(archive, top_k) if "confirmation" not in r.metrics]
    for ref in (base, best_ref):
        if ref is not None and "confirmation" not in ref.metrics and ref not in targets:
            targets.append(ref)
    jobs = [Job(r.id, r.code, "train", seed, split="confirm") for r in targets for seed in seeds]
    fitness: dict[int, list[float]] = {r.id: [] for r in targets}
    for result in executor.run(jobs):
        if result.ok:
            fitness[result.job.row_id].append(result.data["fitness"])
    for row in targets:
        values = fitness[row.id]
        if values:
            mean, std = _mean_std(values)
            archive.update_metrics(row.id, {"confirmation": {"seeds": seeds, "fitness": values, "mean": mean,
                                                              "std": std}})
    base = reference_row(archive, baseline) if base is not None else None
    if base is None or "confirmation" not in base.metrics:
        return {}
    b = base.metrics["confirmation"]
    best_ref = archive.get(best_ref.id) if best_ref is not None else None
    bb = best_ref.metrics.get("confirmation") if best_ref is not None else None
    for row in top_candidates(archive, top_k):
        c = row.metrics.get("confirmation")
        if not c:
            continue
        delta = c["mean"] - b["mean"]
        significant, noise = verdict(delta, c["std"], len(c["fitness"]), b["std"], len(b["fitness"]))
        update = {**c, "baseline": baseline, "dpo_mean": b["mean"], "dpo_std": b["std"], "delta": delta,
                  "noise": noise, "significant": significant}
        if bb:  # the strongest baseline of the run, which a discovery must beat to be news
            d_best = c["mean"] - bb["mean"]
            sig_best, noise_best = verdict(d_best, c["std"], len(c["fitness"]), bb["std"], len(bb["fitness"]))
            update.update(best_baseline=best_ref.name, best_baseline_mean=bb["mean"], delta_best=d_best,
                          noise_best=noise_best, significant_best=sig_best)
        archive.update_metrics(row.id, {"confirmation": update})
    return b


def best_reference(archive: Archive) -> Row | None:
    """The reference loss with the best search fitness in this run."""
    rows = archive.rows("proposer = 'reference' AND status = 'scored'")
    return max(rows, key=lambda r: r.fitness if r.fitness is not None else -math.inf) if rows else None


def leaderboard_rows(archive: Archive, limit: int = 15) -> list[Row]:
    rows = archive.rows("status = 'scored'")
    return sorted(rows, key=lambda r: r.fitness if r.fitness is not None else -math.inf, reverse=True)[:limit]


def _versus(delta: float, significant: bool, noise: float, name: str) -> str:
    word = ("beats" if delta > 0 else "below") if significant else "within noise of"
    return f"{delta:+.3f} ({word} {name}, 2SE={noise:.3f})"


def _confirm_text(row: Row) -> tuple[str, str, str]:
    c = row.metrics.get("confirmation")
    if not c:
        return "", "", ""
    cell = f"{c['mean']:.3f} ± {c['std']:.3f}"
    vs_dpo = _versus(c["delta"], c["significant"], c["noise"], "DPO") if "delta" in c else ""
    vs_best = (_versus(c["delta_best"], c["significant_best"], c["noise_best"], c["best_baseline"])
               if "delta_best" in c else "")
    return cell, vs_dpo, vs_best


def print_leaderboard(archive: Archive, console: Console | None = None, limit: int = 15) -> None:
    """A rich table of the best scored candidates, with the fresh-seed verdicts."""
    console = console or Console()
    if not console.is_terminal and console.width < 190:
        console = Console(width=190, highlight=False)  # logs and CI: keep the table on one line per row
    rows = leaderboard_rows(archive, limit)
    counts: dict[str, int] = {}
    for r in archive.rows():
        counts[r.status] = counts.get(r.status, 0) + 1
    table = Table(title=f"Leaderboard: {archive.path.parent}", title_justify="left")
    for col in ("#", "id", "name", "proposer", "gen", "fitness", "reward", "KL", "fresh seeds", "vs DPO",
                "vs best baseline"):
        table.add_column(col, justify="right" if col in ("#", "id", "gen", "fitness", "reward", "KL") else "left")
    for rank, r in enumerate(rows, 1):
        confirm_cell, verdict_cell, best_cell = _confirm_text(r)
        table.add_row(str(rank), str(r.id), r.name, r.proposer, str(r.generation), f"{r.fitness:.3f}",
                      f"{r.metrics.get('reward', float('nan')):.3f}", f"{r.metrics.get('kl', float('nan')):.2f}",
                      confirm_cell, verdict_cell, best_cell)
    console.print(table)
    console.print("candidates: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if not rows:
        console.print("no candidate was scored yet")
