"""What archived rows mean to the search: seed scores, standings, the ranking and the proposer's view of history.

The archive only stores rows (``discopop.archive``); reading them as evidence is the search's business, so it
lives here: a row's search fitness per seed, its lower confidence bound under the run's recorded selection
policy (``seed_race``), the one ranking every table uses, and the ``HistoryEntry`` a proposer is shown (with its
behaviour cell and the measured results it may reflect on).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from discopop.archive import Archive, Row
from discopop.contract.diagnostics import compact
from discopop.proposers.base import HistoryEntry
from discopop.search import seed_race
from discopop.search.behaviour_map import cell as behaviour_cell
from discopop.status import Status

# A row's mean on the pick seeds (``search.pick_stage``), which orders the finalists before any search standing. Here,
# beside the other standings, so the leaderboard reads it without importing the executors (and torch) with
# ``search.confirmation``.
PICK_STAGE = "pick_stage"

__all__ = ["feedback_fields", "history_as_of", "history_entry", "pick_standings", "proposer_history", "ranked",
           "run_standings", "seed_scores", "selection_policy"]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def seed_scores(row: Row) -> seed_race.SeedScores | None:
    """The row's search fitness per seed at the chosen learning rate (None unless scored)."""
    return seed_race.scores_of(row.status, row.fitness, row.metrics)


def feedback_fields(metrics: dict[str, Any]) -> dict[str, Any]:
    """The measured results a proposer may reflect on (``HistoryEntry``'s reward ... stage), from ``metrics``."""
    train = metrics.get("train") or {}
    curve = tuple(train[k] for k in ("loss_start", "loss_mid", "loss_end") if _number(train.get(k)) is not None)
    margin = tuple(train[k] for k in ("margin_abs_q50", "margin_abs_q90") if _number(train.get(k)) is not None)
    return {"reward": _number(metrics.get("reward")), "kl": _number(metrics.get("kl")),
            "learning_rate": _number(metrics.get("learning_rate")), "loss_curve": curve if len(curve) == 3 else (),
            "margin_used": margin if len(margin) == 2 else (), "stage": str(metrics.get("stage") or "")}


def history_entry(row: Row, standing: seed_race.Standing | None = None) -> HistoryEntry:
    """The row as a proposer sees it; ``standing`` (from ``run_standings``) adds its selection figures."""
    diagnostics = (row.metrics.get("checks") or {}).get("diagnostics")
    scores = seed_scores(row)
    return HistoryEntry(
        id=row.id, generation=row.generation, name=row.name, code=row.code, status=row.status,
        fitness=row.fitness, error=row.error, parent_ids=tuple(row.parent_ids), proposer=row.proposer,
        thought=row.thought, diagnostics=compact(diagnostics),
        fitness_mean=standing.mean if standing else None, fitness_lcb=standing.lcb if standing else None,
        fitness_seeds=scores.values if scores else (), behaviour_cell=behaviour_cell(diagnostics),
        **feedback_fields(row.metrics),
    )


def ranked(rows: Iterable[Row], policy: seed_race.RacePolicy | None = None) -> list[Row]:
    """Scored rows with a finite fitness, best first by the search's lower confidence bound over their seeds
    (``seed_race``: the bound parents, the LLM's top-k and confirmation use), then by mean; ties: the older row.

    A row's ``fitness`` is its best grid point on the search seed, biased upwards by that choice; a row
    that raced has more seeds, so its bound is the fairer rank. The one ranking behind every table:
    ``discopop leaderboard`` (with the run's recorded ``policy``), the report and the notebook (with the
    default ``selection.z`` and noise prior, which decide the order only when they were overridden).
    """
    good = [r for r in rows if r.status == Status.SCORED and isinstance(r.fitness, (int, float))
            and not isinstance(r.fitness, bool) and math.isfinite(r.fitness)]
    standing = seed_race.standings(((r.id, seed_scores(r)) for r in good), policy or seed_race.RacePolicy())
    return sorted(good, key=lambda r: (-standing[r.id].lcb, -standing[r.id].mean, r.id) if r.id in standing
                  else (math.inf, math.inf, r.id))


def selection_policy(archive: Archive) -> seed_race.RacePolicy:
    """The run's selection policy, as the evaluator recorded it (defaults for an older archive)."""
    return seed_race.RacePolicy.from_state(archive.get_state(seed_race.STATE_KEY))


def run_standings(archive: Archive, rows: list[Row] | None = None) -> dict[int, seed_race.Standing]:
    """Every scored row's mean, lower confidence bound and seed count (noise pooled over ``rows``, by default
    the whole run), under the run's selection policy."""
    rows = archive.rows() if rows is None else rows
    return seed_race.standings(((r.id, seed_scores(r)) for r in rows), selection_policy(archive))


def pick_standings(archive: Archive) -> dict[int, seed_race.Standing]:
    """Every scored row's standing for the finalist pick: on the prompts held out of selection where the run held
    them out (``selection.pick_holdout``: ``metrics.pick``), else on its search fitness as ``run_standings``."""
    rows = archive.rows()
    return seed_race.standings(((r.id, seed_race.pick_scores_of(r.status, r.metrics) or seed_scores(r))
                                for r in rows), selection_policy(archive))


def proposer_history(archive: Archive) -> list[HistoryEntry]:
    """Every row as a proposer sees it, with its standing in the run."""
    rows = archive.rows()
    standing = run_standings(archive, rows)
    return [history_entry(r, standing.get(r.id)) for r in rows]


def history_as_of(archive: Archive, generation: int) -> list[HistoryEntry]:
    """The history as it stood when ``generation``'s evaluation began: earlier generations with their
    results, ``generation``'s own rows still in flight (``proposed``, no results), nothing later.

    What the loop's lookahead shows a proposer asked for ``generation + 1`` meanwhile. It reads the
    same after a resume, whatever has finished since, which keeps ``--resume`` exact (the rows of
    ``generation`` are then its proposals only: its repairs are asked after the lookahead).
    """
    rows = archive.rows_through_generation(generation)
    standing = run_standings(archive, [r for r in rows if r.generation < generation])
    return [history_entry(r, standing.get(r.id)) if r.generation < generation
            else history_entry(replace(r, status=Status.PROPOSED, error=None, fitness=None, metrics={}))
            for r in rows]
