"""The leaderboard: the best scored candidates with their fresh-seed confirmation, in one table.

The confirmation itself (re-training on fresh seeds, paired statistics, verdicts) lives in
``discopop.search.confirmation`` and ``discopop.fitness.stats``; this module only shows what they stored, with the
same words (``stats.describe``) the report, the notebook and exported files use.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from discopop.archive import Archive, Row, ranked
from discopop.fitness import stats
from discopop.report.escape import terminal
from discopop.report.run import beta_of, learning_rate_of, run_beta, tuned_beta
from discopop.status import Status

__all__ = ["leaderboard_rows", "print_leaderboard"]


def leaderboard_rows(archive: Archive, limit: int = 15) -> list[Row]:
    """The best ``limit`` scored rows by the run's selection bound (``archive.ranked``, as the report ranks)."""
    return ranked(archive.rows("status = ?", (Status.SCORED,)), archive.selection_policy())[:limit]


def print_leaderboard(archive: Archive, console: Console | None = None, limit: int = 15) -> None:
    """A rich table of the best scored candidates, with the fresh-seed verdicts."""
    console = console or Console()
    if not console.is_terminal and console.width < 200:
        console = Console(width=200, highlight=False)  # logs and CI: keep the table on one line per row
    rows = leaderboard_rows(archive, limit)
    standing = archive.standings(archive.rows("status = ?", (Status.SCORED,)))
    counts: dict[str, int] = {}
    for r in archive.rows():
        counts[r.status] = counts.get(r.status, 0) + 1
    table = Table(title=f"Leaderboard: {terminal(archive.path.parent)}", title_justify="left")
    beta = run_beta(archive.path.parent)
    numeric = ("#", "id", "gen", "search (seeds)", "bound", "reward", "KL", "beta", "lr")
    for col in ("#", "id", "name", "proposer", "gen", "search (seeds)", "bound", "reward", "KL", "beta", "lr",
                "fresh seeds (mean ± SE)", "vs DPO: Δ [95% CI] verdict", "vs best baseline"):
        table.add_column(col, justify="right" if col in numeric else "left")
    for rank, r in enumerate(rows, 1):
        confirm_cell, verdict_cell, best_cell = stats.confirmation_cells(r.metrics.get("confirmation"))
        seat = standing[r.id]
        lr, row_beta = learning_rate_of(r), beta_of(r, beta)
        table.add_row(str(rank), str(r.id), terminal(r.name), terminal(r.proposer), str(r.generation),
                      f"{seat.mean:.3f} ({seat.seeds})", f"{seat.lcb:.3f}",
                      f"{r.metrics.get('reward', float('nan')):.3f}", f"{r.metrics.get('kl', float('nan')):.2f}",
                      "n/a" if row_beta is None else f"{row_beta:g}", "n/a" if lr is None else f"{lr:g}",
                      confirm_cell, verdict_cell, best_cell)
    console.print(table)
    console.print("candidates: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if rows:
        beta_text = ("the beta each candidate's search chose (training.beta_grid)" if any(
            tuned_beta(r) is not None for r in rows) else "the run's training.beta")
        console.print(f"beta: {beta_text}; lr: the learning rate each candidate was scored at (pass both "
                      "to TRL's DPOConfig: its beta defaults to 0.1)")
        console.print("search: mean fitness over the search seeds; bound: its lower confidence bound, the rank that "
                      "selection and confirmation use")
    if any(isinstance(r.metrics.get("confirmation"), dict) for r in rows):
        console.print("fresh seeds: paired over seeds and confirm prompts; CI before, verdict after Holm correction "
                      f"over all comparisons (alpha {stats.ALPHA}); a failed seed fails its comparisons. MDE: the "
                      f"gain detected with {stats.POWER:.0%} power at the Holm-corrected alpha; 'no gain (or loss) "
                      "above X': the TOST equivalence bound")
    if not rows:
        console.print("no candidate was scored yet")
