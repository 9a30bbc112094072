"""The leaderboard: the best scored candidates with their fresh-seed confirmation, in one table.

The confirmation itself (re-training on fresh seeds, paired statistics, verdicts) lives in
``discopop.search.confirmation`` and ``discopop.fitness.stats``; this module only shows what they stored, with the
same words (``stats.describe``) the report, the notebook and exported files use.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from discopop.archive import Archive, Row
from discopop.fitness import stats
from discopop.report.escape import clean, csv_cell, terminal
from discopop.report.run import beta_of, confirmation_of, learning_rate_of, number, run_beta, tuned_beta
from discopop.search.history import PICK_STAGE, ranked, run_standings, selection_policy

__all__ = ["leaderboard_csv", "leaderboard_json", "leaderboard_records", "leaderboard_rows", "print_leaderboard"]


def leaderboard_rows(archive: Archive, limit: int = 15) -> list[Row]:
    """The best ``limit`` scored rows by the run's selection bound (``search.history.ranked``, as the report ranks)."""
    return ranked(archive.scored_rows(), selection_policy(archive))[:limit]


WIDE = 160  # a console at least this wide gets every column; a narrower one (80 columns) the compact layout


def leaderboard_records(archive: Archive, limit: int = 15) -> list[dict[str, Any]]:
    """One plain record per leaderboard row (numbers as numbers, untrusted text cleaned): what ``--json`` and
    ``--csv`` write and both table layouts show."""
    rows = leaderboard_rows(archive, limit)
    standing = run_standings(archive, archive.scored_rows())
    beta = run_beta(archive.path.parent)
    records = []
    for rank, r in enumerate(rows, 1):
        fresh, vs_dpo, vs_best = stats.confirmation_cells(r.metrics.get("confirmation"))
        conf = confirmation_of(r)
        seat = standing[r.id]
        records.append({
            "rank": rank, "id": r.id, "name": clean(r.name), "proposer": clean(r.proposer), "generation": r.generation,
            "search_mean": seat.mean, "search_seeds": seat.seeds, "bound": seat.lcb,
            "reward": number(r.metrics.get("reward")), "kl": number(r.metrics.get("kl")), "beta": beta_of(r, beta),
            "beta_tuned": tuned_beta(r) is not None,
            "learning_rate": learning_rate_of(r), "fresh_mean": number(conf.get("mean")),
            "fresh_se": number(conf.get("se")), "vs_dpo_verdict": (conf.get("vs_dpo") or {}).get("verdict"),
            "fresh_seeds": fresh, "vs_dpo": vs_dpo, "vs_best_baseline": vs_best,
        })  # fmt: skip
    return records


def status_counts(archive: Archive) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in archive.rows():
        counts[r.status] = counts.get(r.status, 0) + 1
    return dict(sorted(counts.items()))


def leaderboard_json(archive: Archive, limit: int = 15) -> str:
    """The leaderboard as one JSON document: the run, its beta, the status counts and the rows."""
    return json.dumps({"run_dir": clean(archive.path.parent), "beta": run_beta(archive.path.parent),
                       "candidates": status_counts(archive), "rows": leaderboard_records(archive, limit)}, indent=2)


def leaderboard_csv(archive: Archive, limit: int = 15) -> str:
    """The leaderboard as CSV, one row per candidate; text cells a spreadsheet would run are defused."""
    records = leaderboard_records(archive, limit)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = list(records[0]) if records else list(_EMPTY_COLUMNS)
    writer.writerow(columns)
    for rec in records:
        writer.writerow(["" if rec[c] is None else csv_cell(rec[c]) for c in columns])
    return out.getvalue()


_EMPTY_COLUMNS = ("rank", "id", "name", "proposer", "generation", "search_mean", "search_seeds", "bound", "reward",
                  "kl", "beta", "learning_rate", "fresh_mean", "fresh_se", "vs_dpo_verdict", "fresh_seeds", "vs_dpo",
                  "vs_best_baseline")


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _wide_table(records: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    numeric = ("#", "id", "gen", "search (seeds)", "bound", "reward", "KL", "beta", "lr")
    for col in ("#", "id", "name", "proposer", "gen", "search (seeds)", "bound", "reward", "KL", "beta", "lr",
                "fresh seeds (mean ± SE)", "vs DPO: Δ [95% CI] verdict", "vs best baseline"):
        table.add_column(col, justify="right" if col in numeric else "left")
    for rec in records:
        table.add_row(str(rec["rank"]), str(rec["id"]), terminal(rec["name"]), terminal(rec["proposer"]),
                      str(rec["generation"]), f"{rec['search_mean']:.3f} ({rec['search_seeds']})",
                      f"{rec['bound']:.3f}", _num(rec["reward"], ".3f"), _num(rec["kl"], ".2f"),
                      _num(rec["beta"], "g"), _num(rec["learning_rate"], "g"), terminal(rec["fresh_seeds"]),
                      terminal(rec["vs_dpo"]), terminal(rec["vs_best_baseline"]))
    return table


_SHORT_VERDICT = {stats.WITHIN: "within noise", stats.BEATS: "beats", stats.BELOW: "below", stats.FAILED: "failed"}


def _compact_table(records: list[dict[str, Any]], title: str) -> Table:
    """Eight short columns (under 80 characters); the confirmation's sentences follow as lines below."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for col, width in (("#", 2), ("id", 4), ("name", 0), ("gen", 3), ("search (n)", 10), ("bound", 6), ("lr", 5),
                       ("vs DPO", 12)):
        if col == "name":
            table.add_column(col, min_width=8, max_width=20, no_wrap=True, overflow="ellipsis")
        else:
            table.add_column(col, justify="left" if col == "vs DPO" else "right", no_wrap=True,
                             min_width=width if col == "vs DPO" else None)
    for rec in records:
        verdict = rec["vs_dpo_verdict"]
        table.add_row(str(rec["rank"]), str(rec["id"]), terminal(rec["name"]), str(rec["generation"]),
                      f"{rec['search_mean']:.3f} ({rec['search_seeds']})", f"{rec['bound']:.3f}",
                      _num(rec["learning_rate"], ".0e"), terminal(_SHORT_VERDICT.get(verdict, verdict) or "—"))
    return table


def print_leaderboard(archive: Archive, console: Console | None = None, limit: int = 15) -> None:
    """A rich table of the best scored candidates, with the fresh-seed verdicts.

    At least ``WIDE`` columns: every column. Narrower (a terminal of 80 columns): eight short columns, then one
    line per confirmed row with the confirmation in words. Output to a file or pipe gets the wide table on
    one line per row, as logs and CI want.
    """
    console = console or Console()
    if not console.is_terminal and console.width < 200:
        console = Console(width=200, highlight=False)  # logs and CI: keep the table on one line per row
    records = leaderboard_records(archive, limit)
    beta = run_beta(archive.path.parent)
    title = f"Leaderboard: {terminal(archive.path.parent)}"
    wide = console.width >= WIDE
    console.print(_wide_table(records, title) if wide else _compact_table(records, title))
    if not wide:
        for rec in records:
            if rec["fresh_seeds"]:
                parts = [f"fresh seeds {rec['fresh_seeds']}", rec["vs_dpo"], rec["vs_best_baseline"]]
                console.print(f"#{rec['rank']} {terminal('; '.join(p for p in parts if p))}")
    console.print("candidates: " + ", ".join(f"{k} {v}" for k, v in status_counts(archive).items()))
    if records:
        if not wide:
            if not any(rec["beta_tuned"] for rec in records):
                console.print(f"beta {_num(beta, 'g')} for every row (the run's training.beta)")
        beta_text = ("the beta each candidate's search chose (training.beta_grid)" if any(
            rec["beta_tuned"] for rec in records) else "the run's training.beta")
        console.print(f"beta: {beta_text}; lr: the learning rate each candidate was scored at (pass both "
                      "to TRL's DPOConfig: its beta defaults to 0.1)")
        if any("pick" in r.metrics for r in archive.scored_rows()):  # selection.pick_holdout
            console.print("search: mean fitness over the search seeds on the half of the search prompts selection "
                          "ranks on; bound: its lower confidence bound, the rank selection uses; the finalists were "
                          "ordered on the other half (selection.pick_holdout)")
        else:
            console.print("search: mean fitness over the search seeds; bound: its lower confidence bound, the rank "
                          "that selection and confirmation use")
        staged = [r.metrics[PICK_STAGE] for r in archive.scored_rows() if isinstance(r.metrics.get(PICK_STAGE), dict)]
        if staged:  # selection.pick_seeds
            console.print(f"the finalists were chosen among the {len(staged)} best rows by their mean on "
                          f"{len(staged[0].get('seeds') or [])} seeds selection never trained on "
                          "(selection.pick_seeds), ahead of the bound")
    if any(rec["fresh_seeds"] for rec in records):
        console.print("fresh seeds: paired over seeds and confirm prompts; CI before, verdict after Holm correction "
                      f"over all comparisons (alpha {stats.ALPHA}); a failed seed fails its comparisons. MDE: the "
                      f"gain detected with {stats.POWER:.0%} power at the Holm-corrected alpha; 'no gain (or loss) "
                      "above X': the TOST equivalence bound")
    if not records:
        console.print("no candidate was scored yet")
