"""Run facts: the archive's rows read read-only, and what every view asks of them (ranking, winner, lineage).

Only the archive contract (docs/DESIGN.md §4) is used, so a report can be drawn while the loop is
still writing, from a copied run directory, or by a tool that knows nothing else about discopop.
Archived JSON is untrusted: every value is checked before use.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import networkx as nx
import yaml

from discopop.archive import ARCHIVE_NAME, Row, read_rows
from discopop.config.compose import SAVED_CONFIG
from discopop.report.escape import clean
from discopop.search.history import ranked, seed_scores
from discopop.text import one_line

EMPTY_NOTE = "The archive has no candidates yet."


def load_rows(run_dir: Path | str) -> list[Row]:
    """All candidate rows of a run, read through a read-only SQLite connection.

    Read-only so that a report never takes a write lock on (or migrates) the archive of a live run.
    """
    return read_rows(Path(run_dir) / ARCHIVE_NAME)


def number(value: Any) -> float | None:
    """A finite float, or None (metrics are JSON written by other code: trust nothing)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def scored(rows: list[Row]) -> list[Row]:
    """Rows with a usable fitness, best first (``search.history.ranked``: as ``discopop leaderboard``)."""
    return ranked(rows)


def baseline(rows: list[Row], name: str) -> Row | None:
    """The scored reference row called ``name`` (``dpo``, ``lrml``...), if the run has one."""
    for r in scored(rows):
        if r.proposer == "reference" and r.name.lower() == name:
            return r
    return None


def winner(rows: list[Row]) -> Row | None:
    """The best discovered candidate (a baseline only when nothing evolved was scored).

    Baselines are drawn as reference lines everywhere; the winner is what the search found.
    """
    best_first = scored(rows)
    evolved = [r for r in best_first if r.proposer != "reference"]
    return (evolved or best_first or [None])[0]


def lineage_graph(rows: list[Row]) -> nx.DiGraph:
    """Parent -> child graph over all rows (edges to ids not in the archive are dropped)."""
    graph = nx.DiGraph()
    for r in rows:
        graph.add_node(r.id, row=r)
    for r in rows:
        graph.add_edges_from((p, r.id) for p in r.parent_ids if p in graph and p != r.id)
    return graph


def ancestry(rows: list[Row], row_id: int) -> set[int]:
    """``row_id`` and every candidate it descends from."""
    graph = lineage_graph(rows)
    return nx.ancestors(graph, row_id) | {row_id} if row_id in graph else set()


def confirmation_of(row: Row) -> dict[str, Any]:
    """The row's fresh-seed confirmation (``metrics.confirmation``), or {}."""
    conf = row.metrics.get("confirmation")
    return conf if isinstance(conf, dict) else {}


def seconds_of(row: Row) -> dict[str, float]:
    """The row's finite, non-negative stage timings (``metrics.seconds``)."""
    raw = row.metrics.get("seconds")
    if not isinstance(raw, dict):
        return {}
    return {str(k): v for k, v in ((k, number(v)) for k, v in raw.items()) if v is not None and v >= 0}


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table cell, or a dash."""
    v = number(value)
    return "—" if v is None else f"{v:.{digits}f}"


def row_label(row: Row, width: int = 28) -> str:
    """``#id name`` with the name cut to ``width`` characters."""
    return f"#{row.id} {one_line(clean(row.name), width)}"


def ordinal(n: int) -> str:
    """``1st``, ``2nd``, ``3rd``, ``11th``..."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def search_text(row: Row) -> str:
    """The number the ranking orders by, as the leaderboard shows it: the search mean over the row's seeds.

    Never the row's ``fitness`` alone: that is one seed's best grid point, biased upwards by the choice.
    """
    scores = seed_scores(row)
    if scores is None:
        return f"fitness {fmt(row.fitness)}"
    return f"search mean {fmt(scores.mean)} over {scores.n} seed{'s' if scores.n != 1 else ''}"


def summary(rows: list[Row]) -> str:
    """One line: how many candidates, their fates, the generations, the winner with its rank and the number
    that ranks it, and the reference ranked first where one is ahead of it."""
    if not rows:
        return EMPTY_NOTE
    counts = Counter(r.status for r in rows)
    fates = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    gens = sorted({r.generation for r in rows})
    best = winner(rows)
    if best is None:
        best_text = "nothing scored"
    else:
        ranking = scored(rows)
        rank = [r.id for r in ranking].index(best.id) + 1
        kind = "best discovered" if best.proposer != "reference" else "nothing discovered was scored; best reference"
        best_text = f"{kind}: {row_label(best, 40)} ({search_text(best)}, ranked {ordinal(rank)})"
        if rank > 1:  # the winner is the first evolved row, so every row ranked above it is a reference
            first = ranking[0]
            more = f" and {rank - 2} more" if rank > 2 else ""
            best_text += f"; a reference ranks ahead of it: {row_label(first, 40)} ({search_text(first)}){more}"
    return f"{len(rows)} candidates ({fates}) over generations {gens[0]}–{gens[-1]}; {best_text}."


def diagnostics_of(row: Row) -> dict[str, Any] | None:
    """What the sandboxed checks measured of the loss (``metrics.checks.diagnostics``), if anything."""
    return (row.metrics.get("checks") or {}).get("diagnostics")


def run_beta(run_dir: Path) -> float | None:
    """``training.beta`` of the run's saved config (``.hydra/config.yaml``): the beta every candidate trained at,
    which a user must pass to TRL (its DPOConfig defaults to 0.1). None where the config is missing or unreadable."""
    try:
        cfg = yaml.safe_load((Path(run_dir) / SAVED_CONFIG).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    training = cfg.get("training") if isinstance(cfg, dict) else None
    return number(training.get("beta")) if isinstance(training, dict) else None


def learning_rate_of(row: Row) -> float | None:
    """The learning rate the row was scored at (``metrics.learning_rate``, the tuner's choice), if recorded."""
    return number(row.metrics.get("learning_rate"))


def tuned_beta(row: Row) -> float | None:
    """The beta the row's search chose (``metrics.beta``: only where ``training.beta_grid`` was on), if recorded."""
    return number(row.metrics.get("beta"))


def beta_of(row: Row, run_default: float | None) -> float | None:
    """The beta the row was scored at: its own where the search chose one, else the run's ``training.beta``."""
    chosen = tuned_beta(row)
    return chosen if chosen is not None else run_default


def settings_text(beta: float | None, lr: float | None) -> str:
    """``beta 0.5, lr 8e-05`` for a table cell or a header."""
    return f"beta {'n/a' if beta is None else f'{beta:g}'}, lr {'n/a' if lr is None else f'{lr:g}'}"
