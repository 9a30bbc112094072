"""The finalists picked on seeds selection never trained on (``selection.pick_seeds``).

Selection breeds from the rows that lead on its own fine-tunes, and after tens of generations the leaders have
fitted the noise of those fine-tunes: on the fast tier the feedback arm's pick fell 0.010 from its search standing
to its held-out standing when the contexts were held out of selection but the training seeds were not, against
0.003 for the control arm (docs/results.md §0, "The pick held out of selection"). So before confirmation, the
``pick_pool`` best distinct rows by that standing (and, where the confirmation re-trains only some baselines, every
scored reference) are fine-tuned again at their own rate and beta on ``pick_seeds`` seeds no search, tuning or
confirmation run uses, and scored on the search prompts selection never ranked on
(``LrProtocol.unclimbed_values``). Their mean there (``metrics.pick_stage``) orders the finalists and the
baselines the confirmation and the transfer check re-train (``confirmation._by_selection``); it never touches a
row's fitness or anything selection saw. The runs are archived under the ``pick`` split, so a resumed run trains
only what is missing, and a row that falls out of a longer run's pool keeps its result under
``metrics.superseded_pick_stage``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from discopop.archive import Archive, Row
from discopop.execution.executors import Executor
from discopop.fitness.result_store import StoredRuns
from discopop.fitness.tuning import LrProtocol
from discopop.search.confirmation import latest_runs, run_missing, store_current, top_candidates
from discopop.search.history import PICK_STAGE
from discopop.status import Status

SPLIT = "pick"  # the archive split of the runs; they score the task's search prompts
PROMPTS = "search"
SEED_OFFSET = 3000  # base seed + 3000 + i: past every tuning seed (+2000 + race seed offsets below 1,000)
RETIRED = "superseded_pick_stage"


def pick_seeds(base_seed: int, n_seeds: int) -> list[int]:
    return [base_seed + SEED_OFFSET + i for i in range(n_seeds)]


@dataclass(frozen=True)
class PickStage:
    """``n_seeds`` pick seeds for the ``pool`` best distinct rows; ``protocol`` says which prompts score them."""

    n_seeds: int
    pool: int
    protocol: LrProtocol

    def pool_rows(self, archive: Archive, confirmed_references: int) -> list[Row]:
        """The rows the stage re-trains: the ``pool`` best distinct candidates as selection ranked them, and every
        scored reference where the confirmation re-trains fewer than all of them (else their order changes
        nothing: the strongest baseline is chosen on the confirmation's own fresh seeds)."""
        references = archive.rows_by_proposer("reference", status=Status.SCORED)
        chosen = top_candidates(archive, self.pool, pick_stage=False)
        return chosen + (references if confirmed_references < len(references) else [])

    def run(self, archive: Archive, executor: Executor, base_seed: int, confirmed_references: int,
            store: StoredRuns | None = None) -> None:
        """Train what the pool lacks on the pick seeds, record each pool row's result and retire those of rows no
        longer in it (the order they give is ``confirmation._by_selection``'s)."""
        rows = self.pool_rows(archive, confirmed_references)
        seeds = pick_seeds(base_seed, self.n_seeds)
        run_missing(archive, executor, rows, seeds, store, split=SPLIT, prompts=PROMPTS)
        store_current(archive, PICK_STAGE, RETIRED, {row.id: self.result(archive, row, seeds) for row in rows})

    def result(self, archive: Archive, row: Row, seeds: list[int]) -> dict[str, Any]:
        """``{"seeds", "fitness" (per seed, None where it failed or is missing), "mean" (None unless every seed has
        a finite value), "failed"}`` on the prompts selection never ranked on."""
        runs = latest_runs(archive, row.id, SPLIT)
        fitness: list[float | None] = []
        failed = None
        for seed in seeds:
            run = runs.get(seed)
            values = self.protocol.unclimbed_values(run.per_prompt_fitness()) if run is not None and run.ok else []
            value = float(np.mean(values)) if values else None
            if value is None or not np.isfinite(value):
                value = None
                failed = failed or (f"seed {seed}: no result" if run is None
                                    else f"seed {seed} failed: {run.error or 'no finite per-prompt scores'}")
            fitness.append(value)
        mean = float(np.mean(fitness)) if failed is None and fitness else None
        return {"seeds": seeds, "fitness": fitness, "mean": mean, "failed": failed}
